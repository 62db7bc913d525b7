"""Training checkpoints in one safe format: a single ``.safetensors`` file per epoch.

Every tensor of the state (model, optimiser moments, the torch CPU and CUDA random states, numpy's random
key) is a safetensors tensor; everything else (scheduler, epoch, step, history, best metrics, python's random
state, optimiser hyper-parameters) is JSON in the file's metadata. Loading parses a header and JSON and
copies tensors: it never unpickles, so a checkpoint someone shared cannot run code. The JSON keeps what
JSON alone would lose: tuples, dicts with integer keys, numpy arrays, so a state round-trips exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvimclap.errors import CheckpointError
from qvimclap.files import atomic_path

logger = logging.getLogger(__name__)

FORMAT = "qvimclap-train-checkpoint/1"
SUFFIX = ".safetensors"


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts, lists, tuples, numbers, strings, tensors, numpy arrays) atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    metadata = {"format": FORMAT, "state": json.dumps(encoded)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """The state :func:`save_state` wrote; raises :class:`CheckpointError` for a damaged or foreign file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a qvimclap training checkpoint ({FORMAT})")
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        return _decode(json.loads(metadata["state"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {err})") from None


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-safe form of ``value``; tensors and arrays go into ``tensors`` and leave a reference."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        # a copy of its own: safetensors refuses tensors sharing memory (shared towers alias their weights)
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: _encode(v, tensors) for k, v in value.items()}}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(value["dtype"]))
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value["__dict__"].items()}
