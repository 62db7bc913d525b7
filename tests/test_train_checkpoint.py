"""Training checkpoints: one safe format (tensors in safetensors, the rest JSON), exact round trips of every
state a resume needs, pickles refused, damaged files skipped for the newest intact one (issue 12: 2, 7)."""

from __future__ import annotations

import logging
import pickle
import random

import numpy as np
import pytest
import torch

from qvimclap.errors import CheckpointError
from qvimclap.train.checkpoint import load_state, save_state
from qvimclap.train.run_dir import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state


def _training_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return (
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": 3,
            "step": 12,
            "history": [{"event": "val", "val_mrr": 0.25, "collapsed": False}],
            "best": {"epoch": 2, "val_mrr": 0.3},
        },
        model,
        optimizer,
    )


def test_a_state_round_trips_exactly_and_resumes_the_optimizer_and_random_streams(tmp_path):
    state, model, optimizer = _training_state()
    path = save_state(tmp_path / "epoch-003.safetensors", state)
    loaded = load_state(path)
    assert loaded["epoch"] == 3 and loaded["history"] == state["history"] and loaded["best"] == state["best"]
    assert loaded["scheduler"] == state["scheduler"]
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # tuples (betas) kept
    for key, value in state["model"].items():
        torch.testing.assert_close(loaded["model"][key], value, rtol=0, atol=0)
    # the optimizer continues exactly as the original
    other = torch.optim.AdamW(model.parameters(), lr=1e-3)
    other.load_state_dict(loaded["optimizer"])
    for a, b in zip(other.state.values(), optimizer.state.values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
    # every random stream continues where it was saved
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(loaded["rng"])
    torch.testing.assert_close(torch.rand(3), draws[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), draws[1])
    assert random.random() == draws[2]


def test_shared_weights_are_stored(tmp_path):
    weight = torch.randn(3, 3)
    loaded = load_state(save_state(tmp_path / "s.safetensors", {"model": {"a": weight, "b": weight}}))
    torch.testing.assert_close(loaded["model"]["a"], loaded["model"]["b"])


def test_a_pickled_checkpoint_is_refused_without_being_loaded(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)

    class Evil:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    (folder / "epoch-002.pt").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match=r"epoch-002.pt: a pickled checkpoint .* --force") as err:
        load_latest_checkpoint(tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # a pickle renamed to the safe suffix is a damaged file, never unpickled either
    (folder / "epoch-002.pt").unlink()
    (folder / "epoch-002.safetensors").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        load_latest_checkpoint(tmp_path / "run")
    assert not marker.exists()


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    for epoch in (1, 2, 3):
        save_checkpoint(out, {"epoch": epoch, "w": torch.full((1000,), float(epoch))}, epoch=epoch, keep=3)
    newest = out / "checkpoints" / "epoch-003.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated (a full disk, a kill during a copy)
    (out / "checkpoints" / "epoch-002.safetensors").write_bytes(b"")  # zero bytes
    with caplog.at_level(logging.WARNING):
        state = load_latest_checkpoint(out)
    assert state["epoch"] == 1 and float(state["w"][0]) == 1.0
    assert "epoch-003.safetensors: damaged checkpoint" in caplog.text
    assert "resuming from epoch-001.safetensors" in caplog.text
    (out / "checkpoints" / "epoch-001.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="no intact checkpoint is left"):
        load_latest_checkpoint(out)
    assert load_latest_checkpoint(tmp_path) is None  # a run without checkpoints starts from scratch
