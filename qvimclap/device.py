"""Where the heavy work runs: one rule for every command and API call.

``"auto"`` (the default everywhere) is the first CUDA GPU when torch sees one, else the CPU. Under
``torchrun`` each process takes the GPU of its ``LOCAL_RANK``. Embeddings and index files never depend on the
device beyond float32 round-off: every result is moved back to the CPU before it is checked and written.
"""

from __future__ import annotations

import os

import torch

from qvimclap.errors import QvimclapError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a :class:`torch.device` that torch can use.

    Raises :class:`QvimclapError` for an unknown name or a GPU this machine does not have.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise QvimclapError(f"device {name!r} is not known; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise QvimclapError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise QvimclapError(f"device {name!r}: torch sees no CUDA GPU on this machine; use --device cpu")
    index = device.index if device.index is not None else 0
    if index >= torch.cuda.device_count():
        raise QvimclapError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)"
        )
    return torch.device("cuda", index)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
