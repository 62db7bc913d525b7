"""One device rule: auto picks a GPU only when torch sees one; bad names, absent GPUs: one-line errors."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from qvimclap.cli import app
from qvimclap.device import module_device, resolve_device
from qvimclap.errors import QvimclapError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters


@pytest.mark.parametrize(("name", "message"), [("tpu", "not known"), ("mps", "not supported")])
def test_unknown_devices_are_refused(name: str, message: str) -> None:
    with pytest.raises(QvimclapError, match=message):
        resolve_device(name)


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(QvimclapError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")
    result = CliRunner().invoke(
        app, ["align", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "Error:" in result.output and "CUDA" in result.output and "Traceback" not in result.output
