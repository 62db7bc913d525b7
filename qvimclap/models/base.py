"""The contract every audio embedder meets, so stores, indexes, search and evaluation need not know which."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from qvimclap.errors import CheckpointError, first_line
from qvimclap.files import atomic_path

if TYPE_CHECKING:
    import torch

#: The two files of every model folder (diffusers/transformers layout).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@runtime_checkable
class AudioEmbedder(Protocol):
    """Turns mono waveforms into L2-normalised float32 embeddings.

    ``embed`` takes float32 mono ``[T]`` arrays at ``sample_rate`` (any lengths; the embedder applies its own
    pad/crop policy) and returns ``[N, embedding_dim]`` float32, L2-normalised, finite, in input order.
    Batching never changes a result beyond float32 round-off.
    """

    sample_rate: int
    embedding_dim: int

    def fingerprint(self) -> dict[str, Any]: ...

    def embed(self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray: ...


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation of ``[N, D]`` float32; a zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def read_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file; a damaged or unreadable one raises CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({first_line(err)}); the model folder is damaged"
        ) from None


def write_model_folder(
    save_dir: str | Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``save_dir``, each file replaced atomically; the one
    writer behind every ``save_pretrained`` here. Returns ``save_dir``."""
    from safetensors.torch import save_file

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(save_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", **(metadata or {})})
    with atomic_path(save_dir / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    return save_dir


def read_json(path: Path) -> Any:
    """A JSON file's value; a file that is not valid JSON raises CheckpointError naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def read_model_folder(folder: Path, *, model_type: str, writer: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config (without ``model_type``, the writing version and the original source) and the tensors of a
    ``save_pretrained`` folder whose config says ``model_type``; anything else raises CheckpointError.
    ``writer`` names the method that writes such folders, for the message."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{folder}: not a model folder written by {writer} (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    data = read_json(config_path)
    found = data.get("model_type") if isinstance(data, dict) else None
    if found != model_type:
        raise CheckpointError(f"{config_path}: model_type is {found!r}, expected {model_type!r}")
    # where the weights first came from is history: this folder is the source now
    config = {k: v for k, v in data.items() if k not in ("model_type", "qvimclap_version", "source")}
    return config, read_safetensors(weights_path)


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: Path | str,
    *,
    mismatch: str = "does not fit the architecture",
) -> None:
    """``load_state_dict(strict=True)`` after naming every missing, unexpected or wrongly shaped tensor in one
    CheckpointError (``"{path}: {mismatch} (...)"``)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(items)} {label}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        raise CheckpointError(f"{path}: {mismatch} ({'; '.join(parts)})")
    module.load_state_dict(dict(state_dict), strict=True)
