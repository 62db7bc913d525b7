"""Fingerprints: what produced an embedding (model, weights, preprocessing), so mismatches are refused.

A fingerprint is a flat JSON-able ``dict`` with at least ``encoder``, ``weights_sha256``, ``preprocessing``
and ``dim``. Two fingerprints are compatible when they agree on every key except those in ``IGNORED_KEYS``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: Keys recorded for information only (a moved folder keeps its weights hash); embeddings stay comparable.
IGNORED_KEYS = frozenset({"qvimclap_version", "created", "source"})


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes, dtypes and float32 bytes of a state_dict, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        data = tensor.contiguous()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16
            data = data.float()
        digest.update(np.ascontiguousarray(data.numpy()).tobytes())
    return digest.hexdigest()


def canonical_json(fingerprint: Mapping[str, Any]) -> str:
    """Stable JSON text (sorted keys, no whitespace) of a fingerprint."""
    return json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """Short hex id of the comparable part of a fingerprint (12 characters)."""
    comparable = {k: v for k, v in fingerprint.items() if k not in IGNORED_KEYS}
    return hashlib.sha256(canonical_json(comparable).encode()).hexdigest()[:12]


def fingerprint_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: expected X, got Y`` lines for every comparable key that differs."""
    lines = []
    for key in sorted((set(expected) | set(actual)) - IGNORED_KEYS):
        a, b = expected.get(key), actual.get(key)
        if canonical_json({"v": a}) != canonical_json({"v": b}):
            lines.append(f"{key}: expected {_short(a)}, got {_short(b)}")
    return lines


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
