"""Generation for ``qvimclap serve``: one job at a time, in submission order, with its progress visible.

AudioLDM takes seconds to minutes per sound and most of the machine's memory, so requests never run it
themselves: they queue a :class:`Job` and poll it. One worker thread runs
:func:`qvimclap.generation.generate_from_imitation` (the function behind ``qvimclap generate``) on each job
in turn, reporting every denoising step. Results stay in memory as WAV bytes (16 kHz, 32-bit float, like
``qvimclap generate`` writes); only the newest ``keep_finished`` finished jobs are kept.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from qvimclap.errors import QvimclapError
from qvimclap.generation import AudioLdm, GenerationConfig, generate_from_imitation
from qvimclap.models.base import AudioEmbedder

logger = logging.getLogger(__name__)


class QueueFullError(QvimclapError):
    """Too many generation jobs are waiting; the client should try again later."""


@dataclass
class Job:
    """One generation request and where it stands: ``queued`` -> ``running`` -> ``done`` | ``failed``."""

    id: str
    config: GenerationConfig
    text: str | None
    text_weight: float
    waveform: np.ndarray = field(repr=False)
    sample_rate: int
    status: str = "queued"
    step: int = 0
    num_steps: int = 0
    error: str | None = None
    wav: bytes | None = field(default=None, repr=False)
    duration_s: float | None = None

    def to_dict(self, position: int | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "position": position,  # jobs ahead of this one; None once it has started
            "step": self.step,
            "num_steps": self.num_steps or self.config.num_steps,
            "duration_s": self.duration_s,
            "seed": self.config.seed,
            "error": self.error,
        }


class GenerationQueue:
    """A FIFO of generation jobs served by one worker thread (started on the first submission)."""

    def __init__(
        self, audioldm: AudioLdm, model: AudioEmbedder, *, max_pending: int = 8, keep_finished: int = 16
    ) -> None:
        self.audioldm = audioldm
        self.model = model
        self.max_pending = max_pending
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        config: GenerationConfig,
        *,
        text: str | None = None,
        text_weight: float = 0.5,
    ) -> Job:
        """Queue a job for ``waveform`` (float32 ``[T]`` at ``sample_rate``); raises QueueFullError."""
        with self._lock:
            waiting = sum(job.status == "queued" for job in self._jobs.values())
            if waiting >= self.max_pending:
                raise QueueFullError(f"{waiting} generations are already waiting; try again in a minute")
            job = Job(uuid.uuid4().hex[:12], config, text, text_weight, waveform, sample_rate)
            self._jobs[job.id] = job
            self._forget_old_jobs()
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="qvimclap-generate", daemon=True)
                self._worker.start()
        self._pending.put(job)
        return job

    def get(self, job_id: str) -> tuple[Job, int | None] | None:
        """``(job, jobs ahead of it)`` or None for an unknown (or forgotten) id."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status != "queued":
                return job, None
            ahead = [j for j in self._jobs.values() if j.status in ("queued", "running")]
            return job, ahead.index(job)

    def close(self, timeout_s: float = 60.0) -> None:
        """Drop queued jobs and stop the worker once the job it is running ends (waits ``timeout_s``)."""
        with self._lock:
            for job in self._jobs.values():
                if job.status == "queued":
                    job.status, job.error = "failed", "the server stopped before this job ran"
        self._pending.put(None)
        if self._worker is not None:
            self._worker.join(timeout_s)

    def _run(self) -> None:
        while (job := self._pending.get()) is not None:
            if job.status == "queued":  # not dropped by close()
                self._run_one(job)

    def _run_one(self, job: Job) -> None:
        job.status = "running"

        def on_step(i: int, n: int) -> None:
            job.step, job.num_steps = i, n

        try:
            result = generate_from_imitation(
                job.waveform,
                job.sample_rate,
                self.model,
                self.audioldm,
                job.config,
                text=job.text,
                text_weight=job.text_weight,
                on_step=on_step,
            )
            buffer = io.BytesIO()
            sf.write(buffer, result.waveforms[0], result.sample_rate, subtype="FLOAT", format="WAV")
            job.wav, job.duration_s = buffer.getvalue(), result.duration_s
            job.status = "done"
        except QvimclapError as err:
            job.error, job.status = str(err), "failed"
        except Exception as err:  # a bug: keep serving, say so, and keep the traceback in the log
            logger.exception("generation job %s failed", job.id)
            job.error, job.status = f"internal error: {type(err).__name__}: {err}", "failed"
        finally:
            job.waveform = np.zeros(0, np.float32)  # the upload is no longer needed

    def _forget_old_jobs(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.status in ("done", "failed")]
        for job_id in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job_id]
