"""Inputs longer than a model's clip length: windows of the clip length, embedded one by one, then pooled.

A model trained on ``L``-sample crops sees an ``L``-sample input. A longer input (a query of 8 s for a model
of 3 s clips) is cut into windows of ``L`` samples every ``hop`` samples, the last one ending at the input's
last sample, so that every sample is in a window and no window is zero-padded. Each window gets its own
L2-normalised embedding ``[W, D]``; :func:`pool_windows` makes them one. An input of at most ``L`` samples is
one window, zero-padded at the end, as before.

Policies (``AlignedConfig.long_input``):

- ``"start"``: only the first ``L`` samples (the published QVIM models' policy, and qvimclap's until the
  policy became a field of the model folder);
- ``"windows-mean"``: the mean of the normalised window embeddings, normalised;
- ``"windows-max"``: the element-wise maximum of the normalised window embeddings, normalised;
- ``"whole"``: the whole input through the tower at once (the encoder is fully convolutional and mean-pools
  over time, so a longer input only means more frames in that mean).
"""

from __future__ import annotations

import numpy as np

from qvimclap.audio import pad_or_crop
from qvimclap.models.base import l2_normalize

LONG_INPUT_POLICIES = ("start", "windows-mean", "windows-max", "whole")


def window_starts(num_samples: int, window: int, hop: int) -> np.ndarray:
    """First sample of each window of ``window`` samples over an input of ``num_samples``; ``[W]`` int64.

    Windows start every ``hop`` samples; the last one ends at the input's end (it may overlap its
    predecessor by more than the others do). An input of at most ``window`` samples is one window at 0.
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1 sample, got {window} and {hop}")
    if num_samples <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, num_samples - window, hop, dtype=np.int64)
    return np.append(starts, num_samples - window)


def split_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """``[T]`` -> ``[W, window]``: the windows of :func:`window_starts` (one zero-padded window when ``T <=
    window``)."""
    if x.shape[-1] <= window:
        return pad_or_crop(x, window)[None]
    starts = window_starts(x.shape[-1], window, hop)
    return np.stack([x[s : s + window] for s in starts])


def pool_windows(embeddings: np.ndarray, how: str) -> np.ndarray:
    """``[W, D]`` L2-normalised window embeddings -> one ``[D]`` float32 L2-normalised embedding.

    ``how``: ``"mean"`` or ``"max"`` (element-wise). One window is returned as it is.
    """
    if how == "mean":
        pooled = embeddings.mean(axis=0)
    elif how == "max":
        pooled = embeddings.max(axis=0)
    else:
        raise ValueError(f"window pooling must be 'mean' or 'max', got {how!r}")
    return l2_normalize(pooled[None].astype(np.float32))[0]
