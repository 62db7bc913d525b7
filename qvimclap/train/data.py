"""The training data of an alignment run: the split, the targets, the decoded clips, seeded crops and the
per-epoch batch order.

Determinism: the pair order of an epoch is a permutation seeded by ``(seed, epoch)``, and the crops of item
``i`` are drawn from a generator seeded by ``(seed, epoch, i)``; neither depends on the process or on what ran
before, so a resumed or distributed run sees the same batches as an uninterrupted single-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvimclap.audio import load_audio
from qvimclap.models.aligned import SAMPLE_RATE
from qvimclap.models.base import AudioEmbedder
from qvimclap.train.config import AlignConfig, TrainingError
from qvimclap.train.distributed import barrier


def load_waveforms(paths: Sequence[Path], sample_rate: int, max_duration_s: float) -> list[np.ndarray]:
    """Read every file once as float32 mono ``[T]`` at ``sample_rate``, at most ``max_duration_s`` long."""
    return [load_audio(p, sample_rate, max_duration_s=max_duration_s, allow_silent=True) for p in paths]


def seeded_crop(
    x: np.ndarray, num_samples: int, rng: np.random.Generator, *, random_pad: bool = False
) -> np.ndarray:
    """A random ``num_samples`` window of a longer clip; shorter clips are zero-padded at the end, or with
    ``random_pad`` placed at a random offset in the window (a time shift)."""
    extra = x.shape[-1] - num_samples
    if extra <= 0:
        before = int(rng.integers(0, -extra + 1)) if random_pad else 0
        return np.pad(x, (before, -extra - before))
    start = int(rng.integers(0, extra + 1))
    return x[start : start + num_samples]


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times as fast (pitch and tempo together, as a tape), by linear interpolation."""
    length = max(1, int(round(len(x) / factor)))
    return np.interp(np.arange(length) * factor, np.arange(len(x)), x).astype(np.float32)


class PairDataset(torch.utils.data.Dataset):
    """Training pairs as ``(imitation [T], reference [T], reference index, pair index)``, crops seeded per
    epoch.

    ``queries`` / ``references`` hold the decoded clips; ``pairs`` is ``[P, 2]`` (query index, reference
    index). Item ``i`` of epoch ``e`` always gets the same crops: the generator is seeded with ``(seed, e,
    i)``.
    """

    def __init__(
        self,
        queries: list[np.ndarray],
        references: list[np.ndarray],
        pairs: np.ndarray,
        *,
        num_samples: int,
        seed: int = 0,
        random_pad: bool = False,
        speed_perturb: float = 0.0,
    ) -> None:
        self.queries, self.references, self.pairs = queries, references, np.asarray(pairs, dtype=np.int64)
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0
        self.random_pad, self.speed_perturb = random_pad, speed_perturb

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        q, r = self.pairs[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        imitation = self.queries[q]
        if self.speed_perturb > 0:
            imitation = change_speed(
                imitation, float(np.exp(rng.uniform(-1, 1) * np.log1p(self.speed_perturb)))
            )
        imitation = seeded_crop(imitation, self.num_samples, rng, random_pad=self.random_pad)
        reference = seeded_crop(self.references[r], self.num_samples, rng, random_pad=self.random_pad)
        return imitation, reference, int(r), int(index)


def collate_pairs(items: list[tuple[np.ndarray, np.ndarray, int, int]]) -> dict[str, torch.Tensor]:
    """Stack items into ``imitation [B, T]``, ``reference [B, T]`` float32 and
    ``reference_index``/``pair_index``."""
    return {
        "imitation": torch.from_numpy(np.stack([it[0] for it in items]).astype(np.float32)),
        "reference": torch.from_numpy(np.stack([it[1] for it in items]).astype(np.float32)),
        "reference_index": torch.tensor([it[2] for it in items], dtype=torch.long),
        "pair_index": torch.tensor([it[3] for it in items], dtype=torch.long),
    }


def epoch_batches(num_items: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1):
    """This rank's batches of one epoch: a permutation seeded by ``(seed, epoch)``, sharded, full batches
    only."""
    order = np.random.default_rng([seed, epoch, 7]).permutation(num_items)
    per_rank = batch_size // world
    num_batches = num_items // (per_rank * world)
    order = order[: num_batches * per_rank * world].reshape(num_batches, world, per_rank)  # [N, world, b]
    return [batch[rank].tolist() for batch in order]


def batch_loader(
    dataset: PairDataset, batches: list[list[int]], *, device: torch.device, num_workers: int | None = None
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding :func:`collate_pairs` batches in exactly the order of ``batches``.

    ``num_workers`` None: 4 worker processes when training on a GPU, none on the CPU (where they would take
    cores from the model). Workers fork after :meth:`PairDataset.set_epoch`, so their crops are the epoch's;
    the clips are memory-mapped, so workers share them instead of copying. Memory is pinned for a GPU so the
    copies to it can be non-blocking.
    """
    if num_workers is None:
        num_workers = 4 if device.type == "cuda" else 0
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_pairs,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        # its own generator: a DataLoader otherwise draws its worker seed from torch's global RNG, which the
        # mel augmentations use, and the run would no longer be the loop-by-hand run it replaces
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def batch_files(dataset: PairDataset, pair_index: torch.Tensor, paths: dict[str, list[Path]]) -> str:
    """The ``imitation -> reference`` files of a batch, for an error message (at most 8 named)."""
    rows = dataset.pairs[pair_index.numpy()]
    names = [f"{paths['queries'][q]} -> {paths['references'][r]}" for q, r in rows]
    return "; ".join(names[:8]) + (f"; and {len(names) - 8} more" if len(names) > 8 else "")


def _index_pairs(dataset, query_index: dict[Path, int], reference_index: dict[Path, int]) -> np.ndarray:
    return np.array(
        [(query_index[p.query_path], reference_index[p.reference_path]) for p in dataset.pairs],
        dtype=np.int64,
    ).reshape(-1, 2)


def prepare_data(
    config: AlignConfig, target: AudioEmbedder, *, rank: int, world: int, progress: bool = False
) -> dict[str, Any]:
    """The split (recorded in the run folder as ``split.json``), the ``target`` embeddings of every reference
    (rank 0 fills the cache, then the others read it) and the decoded clips, memory-mapped from the prepared
    dataset (:mod:`qvimclap.prepared`).

    Returns ``fingerprint`` (the target's), ``targets`` (``[R, D]`` float32 tensor), ``train``
    (a :class:`PairDataset`), ``val`` (clips, targets, true reference per query, chance MRR) and ``paths``.
    """
    from qvimclap.data import open_dataset
    from qvimclap.data.split import SplitRecord, split_by_reference
    from qvimclap.evaluation import chance_mrr
    from qvimclap.prepared import prepare_dataset

    dataset = open_dataset(config.data)
    if not dataset.pairs:
        raise TrainingError(f"{config.data}: has no (imitation, reference) pairs to train on")
    train_set, val_set = split_by_reference(dataset, val_fraction=config.val_fraction, seed=config.seed)
    out = Path(config.out)
    if rank == 0:  # the model folder records its split: eval-retrieval --split val reads it back
        SplitRecord.of(dataset, val_fraction=config.val_fraction, seed=config.seed).save(out)
    settings = dict(
        target=target,
        cache_dir=config.cache_dir,
        sample_rate=SAMPLE_RATE,
        max_duration_s=max(config.clip_duration_s, 10.0),
        device=config.device,
        view_features=config.target_view and rank == 0,
        progress=progress,
    )
    if rank == 0:  # rank 0 decodes and embeds what is missing; then every rank maps the same cache
        prepared = prepare_dataset(dataset, **settings)
    barrier(world)
    if rank != 0:
        prepared = prepare_dataset(dataset, **{**settings, "progress": False})
    targets, features = prepared.targets, prepared.query_features
    references, queries = list(dataset.references), list(dataset.queries)
    reference_index = {p: i for i, p in enumerate(references)}
    query_index = {p: i for i, p in enumerate(queries)}
    query_clips, reference_clips = prepared.query_clips(), prepared.reference_clips()
    val_pairs = _index_pairs(val_set, query_index, reference_index)
    val_refs = sorted(set(val_pairs[:, 1].tolist()))
    local = {r: i for i, r in enumerate(val_refs)}
    return {
        "fingerprint": target.fingerprint(),
        "targets": torch.from_numpy(targets),
        "train": PairDataset(
            query_clips,
            reference_clips,
            _index_pairs(train_set, query_index, reference_index),
            num_samples=int(round(config.clip_duration_s * SAMPLE_RATE)),
            seed=config.seed,
            random_pad=config.random_pad,
            speed_perturb=config.speed_perturb,
        ),
        "val": {
            "queries": [query_clips[q] for q in val_pairs[:, 0]],
            "references": [reference_clips[r] for r in val_refs],
            "targets": targets[val_refs],
            "true_ref": np.array([local[r] for r in val_pairs[:, 1]]),
            "chance_mrr": chance_mrr(len(val_refs)),
            "query_features": None if features is None else features[val_pairs[:, 0]],
        },
        "query_features": features,
        "paths": {"queries": queries, "references": references},
        "reference_kind": torch.as_tensor(
            np.unique([dataset.label_of(r) for r in references], return_inverse=True)[1], dtype=torch.long
        ),
    }
