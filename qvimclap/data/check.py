"""One pass over a dataset: counts, duration and sample-rate summaries, and every file that cannot be used.

Every query and reference is opened once (header, then samples), so a missing, unreadable, non-finite or
all-silent file is found before any model runs. ``qvimclap data check PATH`` prints the report and exits
non-zero when :attr:`CheckReport.ok` is false.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvimclap.audio import MAX_DURATION_S, audio_info, load_audio
from qvimclap.data import Dataset, open_dataset
from qvimclap.errors import AudioError, SilentAudioError, printable

logger = logging.getLogger(__name__)

ROLES = ("query", "reference")


@dataclass(frozen=True)
class FileProblem:
    """A file that cannot be used: ``kind`` is "missing", "unreadable" or "silent"."""

    path: Path
    role: str
    kind: str
    message: str


@dataclass(frozen=True)
class Summary:
    """min / median / max of a list of numbers (zeros when the list is empty)."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: list[float] | list[int]) -> Summary:
        if not values:
            return cls(0.0, 0.0, 0.0)
        return cls(float(np.min(values)), float(np.median(values)), float(np.max(values)))


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_dataset` found. ``ok`` is false when any file is missing, unreadable or silent."""

    root: Path
    layout: str
    num_references: int
    num_queries: int
    num_pairs: int
    num_classes: int
    queries_per_reference: Summary
    duration_s: dict[str, Summary]  # role -> summary over the readable files
    total_duration_s: dict[str, float]
    sample_rates: dict[str, dict[int, int]]  # role -> {sample rate: number of files}
    num_multichannel: dict[str, int]
    num_cropped: dict[str, int]  # files longer than MAX_DURATION_S, cropped when read
    problems: tuple[FileProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, plus ``ok``."""
        out = asdict(self)
        out["root"] = str(self.root)
        out["problems"] = [{**asdict(p), "path": str(p.path)} for p in self.problems]
        out["ok"] = self.ok
        return out

    def format(self) -> str:
        """A human-readable multi-line report."""
        q = self.queries_per_reference
        lines = [
            f"dataset   {printable(self.root)} (layout: {self.layout})",
            f"references {self.num_references}   queries {self.num_queries}   pairs {self.num_pairs}   "
            f"classes {self.num_classes}",
            f"queries per reference  min {q.min:g}  median {q.median:g}  max {q.max:g}",
        ]
        for role in ROLES:
            d = self.duration_s[role]
            rates = ", ".join(f"{rate} Hz x{n}" for rate, n in sorted(self.sample_rates[role].items()))
            lines += [
                f"{role} files: duration min {d.min:.2f} s  median {d.median:.2f} s  max {d.max:.2f} s  "
                f"total {self.total_duration_s[role] / 60:.1f} min",
                f"  sample rates {rates or '-'};  multichannel {self.num_multichannel[role]};  "
                f"longer than {MAX_DURATION_S:g} s (cropped when read) {self.num_cropped[role]}",
            ]
        counts = Counter(p.kind for p in self.problems)
        if self.ok:
            lines.append("OK: every file is readable and not silent")
        else:
            summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
            lines.append(f"PROBLEMS: {summary}")
            lines += [f"  {p.kind:<10} {p.role:<9} {printable(p.message)}" for p in self.problems]
        return "\n".join(lines)


def check_dataset(dataset: Dataset | str | Path, *, progress: bool = False) -> CheckReport:
    """Open every query and reference of ``dataset`` (a :class:`Dataset` or a path) once and report."""
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset)
    files = {"query": dataset.queries, "reference": dataset.references}
    durations: dict[str, list[float]] = {role: [] for role in ROLES}
    rates: dict[str, Counter] = {role: Counter() for role in ROLES}
    multichannel = dict.fromkeys(ROLES, 0)
    cropped = dict.fromkeys(ROLES, 0)
    problems: list[FileProblem] = []

    for role in ROLES:
        paths = files[role]
        if progress:
            from tqdm import tqdm

            paths = tqdm(paths, desc=f"checking {role}s", unit="file")
        for path in paths:
            problem = _check_file(path, role)
            if isinstance(problem, FileProblem):
                problems.append(problem)
                continue
            durations[role].append(problem.duration_s)
            rates[role][problem.sample_rate] += 1
            multichannel[role] += problem.num_channels > 1
            cropped[role] += problem.duration_s > MAX_DURATION_S

    per_reference = Counter(p.reference_path for p in dataset.pairs)
    return CheckReport(
        root=dataset.root,
        layout=dataset.layout,
        num_references=len(dataset.references),
        num_queries=len(dataset.queries),
        num_pairs=len(dataset.pairs),
        num_classes=len(dataset.labels),
        queries_per_reference=Summary.of([per_reference.get(r, 0) for r in dataset.references]),
        duration_s={role: Summary.of(durations[role]) for role in ROLES},
        total_duration_s={role: float(sum(durations[role])) for role in ROLES},
        sample_rates={role: dict(sorted(rates[role].items())) for role in ROLES},
        num_multichannel=multichannel,
        num_cropped=cropped,
        problems=tuple(problems),
    )


def _check_file(path: Path, role: str):
    """The file's header info, or the :class:`FileProblem` that makes it unusable."""
    if not path.is_file():
        return FileProblem(path, role, "missing", f"{path}: no such file")
    try:
        info = audio_info(path)
        load_audio(path, None)  # decodes: catches truncated data, NaN/Inf samples and silence
    except SilentAudioError as err:
        return FileProblem(path, role, "silent", str(err))
    except AudioError as err:
        return FileProblem(path, role, "unreadable", str(err))
    return info


__all__ = ["CheckReport", "FileProblem", "Summary", "check_dataset"]
