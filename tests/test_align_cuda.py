"""The CUDA paths of training: ``--resume`` equals the uninterrupted run on a GPU (CUDA random states are in
the checkpoints), bf16 autocast, DataLoader workers with pinned memory. Skipped without a CUDA GPU; run by
``bench/gpu_check.py`` on a GPU machine."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from test_align import FakeClap, corpus, tiny_config  # noqa: E402, F401 (corpus: the shared fixture)

from qvimclap.train import align as align_module  # noqa: E402
from qvimclap.train.run_dir import load_checkpoint  # noqa: E402


@pytest.fixture(autouse=True)
def fake_target(monkeypatch):
    monkeypatch.setattr(align_module, "load_target_embedder", lambda config: FakeClap())
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_on_cuda_equals_the_uninterrupted_run(corpus, tmp_path, monkeypatch, bf16):  # noqa: F811
    settings = dict(epochs=3, device="cuda", bf16=bf16, num_workers=2)
    full = align_module.train_alignment(tiny_config(corpus, tmp_path / "full", **settings), progress=False)
    real_save = align_module.save_checkpoint

    def save_then_die(out, state, *, epoch, keep):
        path = real_save(out, state, epoch=epoch, keep=keep)
        if epoch == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(align_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        align_module.train_alignment(tiny_config(corpus, tmp_path / "killed", **settings), progress=False)
    monkeypatch.setattr(align_module, "save_checkpoint", real_save)
    saved = load_checkpoint(tmp_path / "killed" / "checkpoints" / "epoch-002.safetensors")
    assert len(saved["rng"]["cuda"]) == torch.cuda.device_count()
    resumed = align_module.train_alignment(
        tiny_config(corpus, tmp_path / "killed", **settings), resume=True, progress=False
    )
    a = load_checkpoint(full.run_dir / "checkpoints" / "epoch-003.safetensors")["model"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "epoch-003.safetensors")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert [r["val_mrr_clap"] for r in full.history if r["event"] == "val"] == pytest.approx(
        [r["val_mrr_clap"] for r in resumed.history if r["event"] == "val"], abs=1e-6
    )
