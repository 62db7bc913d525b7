"""Alignment training on a tiny synthetic corpus: loss falls, resume, failure modes, DDP.

CLAP is replaced by a small deterministic stand-in (band energies through a fixed random projection): the
targets only need to be a fixed function of the reference audio, and the real CLAP encoder has its own tests.
"""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest
import torch

from qvimclap.data.synth import make_corpus
from qvimclap.errors import QvimclapError
from qvimclap.models.base import l2_normalize
from qvimclap.train import align as align_module
from qvimclap.train.align import (
    AlignConfig,
    TrainingError,
    collate_pairs,
    epoch_batches,
    mean_pairwise_cosine,
    seeded_crop,
    train_alignment,
    warmup_cosine,
)
from qvimclap.train.optim import another_epoch_fits, budget_epochs, fit_schedule_to_budget
from qvimclap.train.run_dir import load_checkpoint


class FakeClap:
    """A frozen stand-in for CLAP: 16 kHz in, ``[N, 512]`` L2-normalised band-energy projections out."""

    sample_rate = 16000
    embedding_dim = 512

    def __init__(self) -> None:
        self.projection = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)

    def fingerprint(self) -> dict:
        return {
            "encoder": "clap",
            "model": "fake",
            "weights_sha256": "0" * 64,
            "preprocessing": {},
            "dim": 512,
            "space": "clap:fake00000000",
            "qvimclap_version": "test",
        }

    def embed(self, waveforms, *, batch_size: int = 16) -> np.ndarray:
        rows = []
        for w in waveforms:
            spectrum = np.abs(np.fft.rfft(w[:16000], n=2048))[:1024].reshape(64, 16).mean(1)
            rows.append(np.log(spectrum + 1e-6) @ self.projection)
        x = np.stack(rows).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_load_clap(source: str, preprocessing: str) -> FakeClap:
    return FakeClap()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(
        tmp_path_factory.mktemp("corpus") / "c", num_references=8, imitations_per_reference=2, seed=3
    )


@pytest.fixture(autouse=True)
def fake_clap(monkeypatch):
    monkeypatch.setattr(align_module, "load_clap", fake_load_clap)
    monkeypatch.setattr(align_module, "load_target_embedder", lambda config: FakeClap())


def tiny_config(corpus, out, **overrides) -> AlignConfig:
    settings = dict(
        data=str(corpus),
        out=str(out),
        qvim="scratch:mn01",
        clip_duration_s=0.5,
        epochs=2,
        batch_size=4,
        lr=2e-3,
        val_fraction=0.25,
        log_every=1,
        validate_every_steps=1,  # every epoch, as most tests count on; the cadence has its own test
    )
    settings.update(overrides)
    return AlignConfig(**settings)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_helpers_are_deterministic_and_correct():
    assert warmup_cosine(10, 2, 0.1)(0) == pytest.approx(0.5)
    assert warmup_cosine(10, 2, 0.1)(2) == pytest.approx(1.0)
    assert warmup_cosine(10, 2, 0.1)(10) == pytest.approx(0.1)
    a = epoch_batches(10, 4, seed=0, epoch=1)
    assert a == epoch_batches(10, 4, seed=0, epoch=1) and len(a) == 2 and len(set(sum(a, []))) == 8
    assert a != epoch_batches(10, 4, seed=0, epoch=2)
    shards = [epoch_batches(10, 4, seed=0, epoch=1, rank=r, world=2) for r in (0, 1)]
    assert sorted(sum(shards[0] + shards[1], [])) == sorted(sum(a, []))  # same pairs, split between ranks
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(
        seeded_crop(x, 4, np.random.default_rng(0)), seeded_crop(x, 4, np.random.default_rng(0))
    )
    assert seeded_crop(x, 12, np.random.default_rng(0)).tolist() == list(range(10)) + [0, 0]
    # random_pad: a short clip lands whole at a seeded offset, every offset possible
    shifted = [seeded_crop(x, 12, np.random.default_rng(s), random_pad=True) for s in range(40)]
    starts = {int(np.flatnonzero(c == 1)[0]) - 1 for c in shifted}
    assert starts == {0, 1, 2} and all(c.sum() == x.sum() and len(c) == 12 for c in shifted)
    np.testing.assert_array_equal(
        seeded_crop(x, 12, np.random.default_rng(3), random_pad=True),
        seeded_crop(x, 12, np.random.default_rng(3), random_pad=True),
    )
    same = np.tile([[0.6, 0.8]], (4, 1))
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])) == pytest.approx(-1 / 3)


def test_training_loss_falls_and_run_folder_is_complete(corpus, tmp_path):
    from qvimclap.models.aligned import AlignedModel

    config = tiny_config(corpus, tmp_path / "run", epochs=4)
    result = train_alignment(config, progress=False)
    rows = read_metrics(result.run_dir)
    train = [r for r in rows if r["event"] == "train"]
    first = np.mean([r["loss"] for r in train if r["epoch"] == 1])
    last = np.mean([r["loss"] for r in train if r["epoch"] == 4])
    assert last < first
    # grad norms per group and the loss terms are logged
    assert {
        "grad_norm/head",
        "grad_norm/imitation_tower",
        "loss/imitation_clap",
        "loss/reference_clap",
        "loss/imitation_kind",
    } <= set(train[0])
    val = [r for r in rows if r["event"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3, 4]
    assert all(0 < r["val_mrr_clap"] <= 1 and 0 < r["val_mrr_qvim"] <= 1 for r in val)
    best = max(val, key=lambda r: r["val_mrr"])
    assert best["val_mrr"] == pytest.approx((best["val_mrr_clap"] + best["val_mrr_qvim"]) / 2)
    assert result.best_epoch == best["epoch"]
    for name in ("config.json", "model.safetensors", "curves.png", "summary.json", "align_config.json"):
        assert (result.run_dir / name).is_file(), name
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == [
        "epoch-003.safetensors",
        "epoch-004.safetensors",
    ]
    model = AlignedModel.from_pretrained(result.run_dir)
    assert model.config.clap_fingerprint["space"] == "clap:fake00000000"
    assert model.embedder().fingerprint()["space"] == "clap:fake00000000"
    # the CLAP targets were cached once under the corpus
    assert len(list((corpus / ".qvimclap-cache").glob("clap-*.h5"))) == 1
    # the model folder records its split
    from qvimclap.data import open_dataset
    from qvimclap.data.split import SplitRecord, read_split

    assert read_split(result.run_dir) == SplitRecord.of(open_dataset(corpus), val_fraction=0.25, seed=0)


def test_existing_run_needs_force_and_resume_needs_a_run(corpus, tmp_path):
    from qvimclap.errors import StoreError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep")
    with pytest.raises(StoreError, match="--force"):
        train_alignment(tiny_config(corpus, tmp_path / "run"), progress=False)
    with pytest.raises(StoreError, match="not a qvimclap run folder"):
        train_alignment(tiny_config(corpus, tmp_path / "run"), force=True, progress=False)
    with pytest.raises(StoreError, match="nothing to resume"):
        train_alignment(tiny_config(corpus, tmp_path / "run"), resume=True, progress=False)
    (tmp_path / "a.wav").write_bytes(b"keep")
    for force in (False, True):
        with pytest.raises(StoreError, match=r"a\.wav: is a file, not a run folder; pick another --out"):
            train_alignment(tiny_config(corpus, tmp_path / "a.wav"), force=force, progress=False)
    assert (tmp_path / "a.wav").read_bytes() == b"keep"


def test_resume_after_a_kill_matches_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    full = train_alignment(tiny_config(corpus, tmp_path / "full", epochs=3), progress=False)

    real_save = align_module.save_checkpoint

    def save_then_die(out, state, *, epoch, keep):
        path = real_save(out, state, epoch=epoch, keep=keep)
        if epoch == 2:
            raise KeyboardInterrupt  # killed right after the epoch-2 checkpoint
        return path

    monkeypatch.setattr(align_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_alignment(tiny_config(corpus, tmp_path / "killed", epochs=3), progress=False)
    monkeypatch.setattr(align_module, "save_checkpoint", real_save)
    with pytest.raises(Exception, match="different settings"):
        train_alignment(
            tiny_config(corpus, tmp_path / "killed", epochs=3, lr=1e-2), resume=True, progress=False
        )
    resumed = train_alignment(tiny_config(corpus, tmp_path / "killed", epochs=3), resume=True, progress=False)

    a = load_checkpoint(full.run_dir / "checkpoints" / "epoch-003.safetensors")["model"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "epoch-003.safetensors")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert [r["val_mrr_clap"] for r in full.history if r["event"] == "val"] == pytest.approx(
        [r["val_mrr_clap"] for r in resumed.history if r["event"] == "val"], abs=1e-6
    )
    assert len(read_metrics(resumed.run_dir)) == len(read_metrics(full.run_dir))


def test_non_finite_loss_stops_and_names_the_batch_files(corpus, tmp_path, monkeypatch):
    real_loss = align_module.alignment_loss

    def poisoned(*args, **kwargs):
        total, terms = real_loss(*args, **kwargs)
        return total * float("nan"), terms

    monkeypatch.setattr(align_module, "alignment_loss", poisoned)
    with pytest.raises(
        TrainingError, match=r"non-finite loss .* epoch 1, step 1; batch files: .*imitations/"
    ):
        train_alignment(tiny_config(corpus, tmp_path / "run"), progress=False)


def test_collapse_is_detected_and_reported(corpus, tmp_path, monkeypatch, caplog):
    from qvimclap.models.aligned import AlignedModel

    # a model whose head ignores its input: every clip gets the same embedding
    model = AlignedModel.from_towers(
        __import__("qvimclap.models.qvim", fromlist=["QvimEncoder"]).QvimEncoder.from_pretrained(
            "scratch:mn01"
        ),
        None,
        clip_duration_s=0.5,
    )
    with torch.no_grad():
        model.imitation_head.layers[-1].weight.zero_()
        model.imitation_head.layers[-1].bias.fill_(1.0)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(8000).astype(np.float32) for _ in range(4)]
    val = {
        "queries": clips,
        "references": clips,
        "targets": np.eye(4, 512, dtype=np.float32),
        "true_ref": np.arange(4),
    }
    metrics = align_module.validate(model, val)
    assert metrics["val_mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["targets_mean_cosine"] == pytest.approx(0.0)
    assert align_module.is_collapsed(metrics)
    # relative to the targets' spread: 0.99 is collapsed among orthogonal targets, healthy in a narrow cone
    assert align_module.is_collapsed({"val_mean_cosine": 0.99, "targets_mean_cosine": 0.0})
    assert not align_module.is_collapsed({"val_mean_cosine": 0.99, "targets_mean_cosine": 0.996})

    real_validate = align_module.validate

    def collapsed_validate(model, val):
        return {**real_validate(model, val), "val_mean_cosine": 1.0}

    monkeypatch.setattr(align_module, "validate", collapsed_validate)
    with caplog.at_level(logging.WARNING, logger="qvimclap.train.align"):
        result = train_alignment(tiny_config(corpus, tmp_path / "run", epochs=1), progress=False)
    assert result.collapsed
    assert "collapsed" in caplog.text
    assert json.loads((result.run_dir / "summary.json").read_text())["collapsed"] is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Killed(Exception):
    pass


def _ddp_worker(
    rank: int, world: int, port: int, config_dict: dict, resume: bool = False, kill_after: int = 0
) -> None:
    import os

    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    align_module.load_target_embedder = lambda config: FakeClap()
    if kill_after:  # every rank dies once epoch ``kill_after`` is checkpointed
        real_stop = align_module._stop_reason

        def stop_or_die(config, epoch, *args, **kwargs):
            if epoch == kill_after:
                raise _Killed
            return real_stop(config, epoch, *args, **kwargs)

        align_module._stop_reason = stop_or_die
    import torch.distributed as dist

    try:
        train_alignment(AlignConfig.from_dict(config_dict), resume=resume, progress=False)
    except _Killed:
        pass
    dist.destroy_process_group()


def test_two_process_gloo_ddp_run(corpus, tmp_path):
    import torch.multiprocessing as mp

    from qvimclap.models.aligned import AlignedModel

    config = tiny_config(corpus, tmp_path / "ddp", epochs=1, batch_size=4)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config.to_dict()), nprocs=2, join=True)
    rows = read_metrics(tmp_path / "ddp")
    assert [r["epoch"] for r in rows if r["event"] == "val"] == [1]
    assert AlignedModel.from_pretrained(tmp_path / "ddp").embedding_dim == 512


def test_a_killed_two_process_ddp_run_resumes_like_the_uninterrupted_one(corpus, tmp_path):
    """Every rank resumes its own random streams (the mel augmentations of rank 1 differ from rank 0's)."""
    import torch.multiprocessing as mp

    full = tiny_config(corpus, tmp_path / "full", epochs=2, batch_size=4).to_dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), full), nprocs=2, join=True)
    killed = tiny_config(corpus, tmp_path / "killed", epochs=2, batch_size=4).to_dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), killed, False, 1), nprocs=2, join=True)
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == [
        "epoch-001.safetensors"
    ]
    mp.spawn(_ddp_worker, args=(2, _free_port(), killed, True), nprocs=2, join=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "epoch-002.safetensors")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "epoch-002.safetensors")
    assert len(b["rng_other_ranks"]) == 1
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=1e-5, rtol=1e-4)


def test_precise_batch_norm_makes_eval_mode_match_train_mode():
    from qvimclap.models.aligned import AlignedModel
    from qvimclap.models.qvim import QvimEncoder
    from qvimclap.train.align import PairDataset, collate_pairs, recalibrate_batch_norm

    torch.manual_seed(0)
    model = AlignedModel.from_towers(QvimEncoder.from_pretrained("scratch:mn01"), None, clip_duration_s=0.5)
    rng = np.random.default_rng(0)
    clips = [(0.3 * rng.standard_normal(16000)).astype(np.float32) for _ in range(4)]
    data = PairDataset(clips, clips, np.array([[0, 1], [1, 2], [2, 3], [3, 0]]), num_samples=16000)
    batch = collate_pairs([data[i] for i in epoch_batches(4, 4, seed=0, epoch=0)[0]])
    with torch.no_grad():
        model.train()
        for tower in (model.imitation_tower,):
            tower.mel.eval()
        train_mode = model(batch["imitation"], batch["reference"])[0]
        model.eval()
        stale = model(batch["imitation"], batch["reference"])[0]
    recalibrate_batch_norm(model, data, num_batches=1, batch_size=4)
    assert not model.training
    with torch.no_grad():
        precise = model(batch["imitation"], batch["reference"])[0]
    # the same up to the unbiased-variance factor of the deepest (tiny) feature maps
    cos_precise = (precise * train_mode).sum(1)
    cos_stale = (stale * train_mode).sum(1)
    assert cos_precise.min() > 0.95 and cos_stale.max() < 0.9


def test_validation_ranks_like_a_default_index():
    """Validation MRR uses the deployed geometry (cosine after subtracting the references' mean). Here raw
    cosine puts the true reference second (MRR 0.5); centred, it is first."""
    from qvimclap.train.align import retrieval_mrr

    references = l2_normalize(np.array([[1.0, 0.3], [1.0, -0.1], [1.0, -0.2]], dtype=np.float32))
    query = l2_normalize(np.array([[1.0, 0.05]], dtype=np.float32))
    raw_order = np.argsort(-(query @ references.T)[0])
    assert raw_order.tolist()[:2] == [1, 0]  # raw cosine: the wrong reference first
    assert retrieval_mrr(query, references, np.array([0])) == (1.0, 1.0)


def test_evaluation_does_not_import_training():
    """Evaluation's metrics and the targets cache stand below ``train`` (data flows one way)."""
    import subprocess
    import sys

    code = (
        "import sys, qvimclap.evaluation, qvimclap.targets; "
        "print([m for m in sys.modules if m.startswith('qvimclap.train')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_patience_and_the_time_budget_stop_training_early(corpus, tmp_path):
    run = train_alignment(tiny_config(corpus, tmp_path / "p", epochs=30, lr=1e-9, patience=2), progress=False)
    epochs = [r["epoch"] for r in run.history if r["event"] == "val"]
    assert epochs == list(range(1, run.best_epoch + 3))  # two epochs without a better model, then stop
    assert (
        "no better validation MRR for 2 epochs"
        in json.loads((run.run_dir / "summary.json").read_text())["stopped"]
    )
    quick = train_alignment(tiny_config(corpus, tmp_path / "t", epochs=30, max_minutes=1e-6), progress=False)
    assert [r["epoch"] for r in quick.history if r["event"] == "val"] == [1]
    assert "time budget" in json.loads((quick.run_dir / "summary.json").read_text())["stopped"]
    # the cosine was fitted to the budget: it ends after epoch 1, where the run stopped, not at epoch 30
    schedule = [r for r in read_metrics(quick.run_dir) if r["event"] == "schedule"]
    assert schedule == [{"event": "schedule", "epoch": 1, "cosine_ends_at_epoch": 1}]


def test_small_epochs_validate_every_few_epochs_and_patience_waits_for_a_validation(corpus, tmp_path):
    """With epochs of a few steps, validation (and its checkpoint) follows the first and the last epoch and
    each epoch in which a multiple of validate_every_steps is passed; patience is judged at validations."""
    run = train_alignment(
        tiny_config(corpus, tmp_path / "c", epochs=7, validate_every_steps=5), progress=False
    )
    per_epoch = next(r["step"] for r in run.history if r["event"] == "val")
    multiples = range(5, 7 * per_epoch + 1, 5)
    expected = [
        e
        for e in range(1, 8)
        if e in (1, 7) or any((e - 1) * per_epoch < m <= e * per_epoch for m in multiples)
    ]
    assert per_epoch < 5 and len(expected) < 7  # the tiny corpus has epochs shorter than the cadence
    assert [r["epoch"] for r in run.history if r["event"] == "val"] == expected
    kept = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert kept == [f"epoch-{e:03d}.safetensors" for e in expected[-2:]]
    with pytest.raises(QvimclapError, match="validate_every_steps must be >= 1"):
        tiny_config(corpus, tmp_path / "x", validate_every_steps=0)

    every_other = 2 * per_epoch  # validations after epochs 1, 2, 4, 6, ...
    stale = train_alignment(
        tiny_config(corpus, tmp_path / "p", epochs=30, lr=1e-9, patience=3, validate_every_steps=every_other),
        progress=False,
    )
    validated = [r["epoch"] for r in stale.history if r["event"] == "val"]
    cadence = [1] + list(range(2, 31, 2))
    stop = next(e for e in cadence if e - stale.best_epoch >= 3)
    assert validated == [e for e in cadence if e <= stop]
    assert (
        "no better validation MRR for 3 epochs"
        in json.loads((stale.run_dir / "summary.json").read_text())["stopped"]
    )


def test_a_time_budget_is_a_ceiling_no_epoch_starts_that_could_not_end_in_it():
    # 10 min, one epoch trained by 8 min: 90 s more training, a 20 s validation at the end, fits exactly
    fits = dict(train_s=90.0, validation_s=20.0, validates_now=False, tail_s=0.0)
    assert another_epoch_fits(490.0, 600.0, **fits)
    assert not another_epoch_fits(490.5, 600.0, **fits)
    # this epoch's own validation, and what follows the last epoch (the view's validation), count too
    assert not another_epoch_fits(490.0, 600.0, **{**fits, "validates_now": True})
    assert not another_epoch_fits(490.0, 600.0, **{**fits, "tail_s": 20.0})
    assert another_epoch_fits(450.0, 600.0, **{**fits, "tail_s": 20.0, "validates_now": True})
    # a spent budget never fits another epoch, however cheap
    assert not another_epoch_fits(
        601.0, 600.0, train_s=0.0, validation_s=0.0, validates_now=False, tail_s=0.0
    )


def test_training_under_a_budget_ends_within_it(corpus, tmp_path, monkeypatch):
    """A clock that epochs advance by 60 s and validations by 10 s: a 5-minute budget fits four epochs
    (the fourth ends, validated, at 280 s; a fifth would end at 350 s), and the cosine was fitted to four."""
    import types

    import qvimclap.train.align as align_module

    clock = {"now": 0.0}
    monkeypatch.setattr(align_module, "time", types.SimpleNamespace(monotonic=lambda: clock["now"]))

    def costs(seconds, method):
        def timed(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            clock["now"] += seconds
            return result

        return timed

    monkeypatch.setattr(align_module._Run, "train_epoch", costs(60.0, align_module._Run.train_epoch))
    monkeypatch.setattr(align_module._Run, "end_epoch", costs(10.0, align_module._Run.end_epoch))
    run = train_alignment(tiny_config(corpus, tmp_path / "b", epochs=30, max_minutes=5), progress=False)
    assert [r["epoch"] for r in run.history if r["event"] == "val"] == [1, 2, 3, 4]
    assert run.elapsed_s == pytest.approx(280.0) and run.elapsed_s <= 300
    assert run.stopped == "the time budget of 5 min had no room for another epoch"
    schedule = [r for r in read_metrics(run.run_dir) if r["event"] == "schedule"]
    assert schedule == [{"event": "schedule", "epoch": 1, "cosine_ends_at_epoch": 4}]


def test_a_time_budget_fits_the_cosine_to_where_the_run_will_stop():
    # 10 min budget, first epoch took 2 min and ended at 2.5 min: three more whole epochs end by 10 min
    # (2.5 + 3 x 2 = 8.5; a fourth would end at 10.5), so epoch 4 is the last
    assert budget_epochs(100, 1, remaining_s=450, epoch_s=120) == 4
    assert budget_epochs(100, 1, remaining_s=480, epoch_s=120) == 5  # exactly four more
    assert budget_epochs(3, 1, remaining_s=450, epoch_s=120) == 3  # never past config.epochs
    assert budget_epochs(100, 4, remaining_s=-5, epoch_s=120) == 4  # spent: this epoch is the last
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(1000, 10, 0.05))
    fit_schedule_to_budget(scheduler, 5, steps_per_epoch=20)
    schedule = scheduler.lr_lambdas[0]
    assert schedule(100) == pytest.approx(0.05) and schedule(55) == pytest.approx(0.525)
    assert scheduler.state_dict()["lr_lambdas"][0]["total_steps"] == 100  # checkpoints keep the horizon


def test_the_target_is_any_frozen_embedder_and_is_recorded(corpus, tmp_path, monkeypatch):
    from qvimclap.models.aligned import AlignedModel

    class FakeAisfx(FakeClap):
        def fingerprint(self) -> dict:
            return {**super().fingerprint(), "encoder": "aisfx", "space": "aisfx:fake00000000"}

    seen = []
    monkeypatch.setattr(
        align_module, "load_target_embedder", lambda config: seen.append(config) or FakeAisfx()
    )
    config = tiny_config(corpus, tmp_path / "a", epochs=1, target="aisfx")
    result = train_alignment(config, progress=False)
    assert seen[0].target_spec == "aisfx"
    model = AlignedModel.from_pretrained(result.run_dir)
    assert model.config.target_spec == "aisfx" and model.config.clap_source == ""
    assert model.embedder().fingerprint()["space"] == "aisfx:fake00000000"
    assert len(list((corpus / ".qvimclap-cache").glob("clap-*.h5"))) == 2  # targets: a store per space
    # an aisfx target gets the target view by default (its features cached beside the targets); a CLAP not
    assert config.target_view is True and model.config.target_view is not None
    assert len(list((corpus / ".qvimclap-cache").glob("features-*.h5"))) == 1
    clap_config = tiny_config(corpus, tmp_path, clap="models/clap-s")
    assert clap_config.target_spec == "clap:models/clap-s" and clap_config.target_view is False
    with pytest.raises(QvimclapError, match="not a frozen embedder"):
        tiny_config(corpus, tmp_path, target="qvim:scratch:mn04")


def test_a_failed_run_leaves_no_folder_that_blocks_the_next(corpus, tmp_path):
    """Issue 12 item 8: a run that fails before its first checkpoint removes its folder; a folder left by a
    run killed that early (only ``align_config.json``) is replaced without ``--force``."""
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="no full batch"):
        train_alignment(tiny_config(corpus, out, batch_size=512), progress=False)
    assert not out.exists()
    out.mkdir()
    (out / "align_config.json").write_text(json.dumps(tiny_config(corpus, out).to_dict()))
    (out / "metrics.jsonl").write_text("")
    result = train_alignment(tiny_config(corpus, out, epochs=1), progress=False)
    assert (result.run_dir / "checkpoints" / "epoch-001.safetensors").is_file()


def test_align_rejects_a_non_finite_learning_rate_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from qvimclap.cli import app

    result = CliRunner().invoke(
        app, ["align", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--lr", "nan"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["Error: lr must be a finite number, got nan"]


def test_a_non_finite_loss_between_checks_names_its_own_batch(corpus, tmp_path, monkeypatch):
    """The finite check runs every ``log_every`` steps (no per-step host-device sync) and still names the
    first offending batch, not the batch of the check."""
    real_loss = align_module.alignment_loss
    calls = []

    def poisoned_second(*args, **kwargs):
        total, terms = real_loss(*args, **kwargs)
        calls.append(1)
        return (total * float("nan") if len(calls) == 2 else total), terms

    monkeypatch.setattr(align_module, "alignment_loss", poisoned_second)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 1, step 2; batch files"):
        train_alignment(tiny_config(corpus, tmp_path / "run", log_every=100), progress=False)
    assert len(calls) == 3  # found at the end of the epoch (3 steps), not at once


def test_the_loader_yields_the_epochs_batches_in_order_with_or_without_workers():
    from qvimclap.train.data import PairDataset, batch_loader

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(500, 3000, 6)]
    pairs = np.array([[i, (i + 1) % 6] for i in range(6)] * 2)
    data = PairDataset(clips, clips, pairs, num_samples=1000, seed=4)
    data.set_epoch(3)
    batches = epoch_batches(len(data), 4, seed=4, epoch=3)
    cpu = torch.device("cpu")
    plain = list(batch_loader(data, batches, device=cpu, num_workers=0))
    forked = list(batch_loader(data, batches, device=cpu, num_workers=2))
    assert [b["pair_index"].tolist() for b in plain] == batches
    for a, b in zip(plain, forked, strict=True):
        torch.testing.assert_close(a["imitation"], b["imitation"], rtol=0, atol=0)
        torch.testing.assert_close(a["reference"], b["reference"], rtol=0, atol=0)
    state = torch.get_rng_state()
    list(batch_loader(data, batches, device=cpu, num_workers=0))
    assert torch.equal(torch.get_rng_state(), state)  # the augmentations' random stream is not touched
    expected = collate_pairs([data[i] for i in batches[0]])
    torch.testing.assert_close(plain[0]["imitation"], expected["imitation"], rtol=0, atol=0)


def test_speed_perturbation_plays_imitations_at_seeded_speeds_and_leaves_references_alone():
    from qvimclap.train.data import PairDataset, change_speed

    sr = 8000
    tone = (1 + 0.5 * np.sin(2 * np.pi * 500 * np.arange(sr) / sr)).astype(np.float32)  # never zero
    fast = change_speed(tone, 1.25)
    assert len(fast) == 6400 and fast.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(fast - fast.mean()))
    assert np.argmax(spectrum) * sr / len(fast) == pytest.approx(625, abs=2)  # 500 Hz played 1.25x as fast
    clips = [tone, tone * 0.5]
    pairs = np.array([[0, 1], [1, 0]])
    plain = PairDataset(clips, clips, pairs, num_samples=16000, seed=2)
    perturbed = PairDataset(clips, clips, pairs, num_samples=16000, seed=2, speed_perturb=0.3)
    lengths = set()
    for epoch in range(6):
        plain.set_epoch(epoch)
        perturbed.set_epoch(epoch)
        a, b = perturbed[0], perturbed[0]
        np.testing.assert_array_equal(a[0], b[0])  # seeded: the same item gets the same speed
        lengths.add(int(np.count_nonzero(a[0])))
        # a 1 s clip in a 2 s window: its played length is 1 s / speed, within [1 / 1.3, 1.3] s
        assert sr / 1.3 - 2 <= np.count_nonzero(a[0]) <= sr * 1.3 + 2
        assert np.count_nonzero(a[1]) == np.count_nonzero(plain[0][1]) == sr  # the reference keeps its speed
    assert len(lengths) >= 4  # the speed varies from epoch to epoch
    with pytest.raises(QvimclapError, match="speed_perturb"):
        AlignConfig(data="x", out="y", speed_perturb=1.5)


def test_the_kind_term_learns_the_datasets_labels(corpus, tmp_path, monkeypatch):
    import csv

    from qvimclap.train import losses

    # the same corpus, its eight sounds relabelled as two kinds (by the sound's index: even or odd)
    rows = list(csv.reader((corpus / "pairs.csv").open()))
    kind_of = {
        ref: ("even" if i % 2 == 0 else "odd") for i, ref in enumerate(dict.fromkeys(r[1] for r in rows[1:]))
    }
    relabelled = tmp_path / "two-kinds.csv"
    with relabelled.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *([q, r, kind_of[r]] for q, r, _ in rows[1:])])
    (tmp_path / "references").symlink_to(corpus / "references")
    (tmp_path / "imitations").symlink_to(corpus / "imitations")
    seen = []
    real = losses.kind_cross_entropy

    def spy(a, bank, bank_kind, kind, *, temperature):
        seen.append((bank_kind.clone(), kind.clone()))
        return real(a, bank, bank_kind, kind, temperature=temperature)

    monkeypatch.setattr(losses, "kind_cross_entropy", spy)
    result = train_alignment(tiny_config(relabelled, tmp_path / "run", epochs=1), progress=False)
    train = [r for r in read_metrics(result.run_dir) if r["event"] == "train"]
    assert all(r["loss/imitation_kind"] > 0 for r in train) and len(seen) == len(train)
    bank_kind, kind = seen[0]
    # the bank holds the six training sounds' kinds ("even" is 0, "odd" 1), as the split recorded them
    from qvimclap.data.split import read_split

    expected = sorted(int(kind_of[ref] == "odd") for ref in read_split(result.run_dir).train_references)
    assert sorted(bank_kind.tolist()) == expected and len(expected) == 6 and set(expected) == {0, 1}
    assert set(kind.tolist()) <= {0, 1}
    # off: the term is neither computed nor logged
    seen.clear()
    off = tiny_config(relabelled, tmp_path / "off", epochs=1, loss={"imitation_kind": 0.0})
    rows = read_metrics(train_alignment(off, progress=False).run_dir)
    assert not seen and not any("loss/imitation_kind" in r for r in rows)
