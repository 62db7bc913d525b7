"""The target view (``align --target-view``): joining, aisfx layer statistics, training, loading, refusal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import tone
from typer.testing import CliRunner

from qvimclap.audio import write_audio
from qvimclap.cli import app
from qvimclap.errors import CheckpointError
from qvimclap.models.aisfx import AisfxConfig, AisfxEncoder, to_blocks
from qvimclap.models.aligned import AlignedModel
from qvimclap.models.qvim import QvimEncoder
from qvimclap.models.view import TargetView, TargetViewConfig
from qvimclap.train.data import PairDataset
from qvimclap.train.view import fit_target_view

SPACE = "fake:0123456789ab"


class FakeTarget:
    """A frozen 'target' at 32 kHz: the clip's first 16 samples, projected to 8 dims."""

    sample_rate = 32000
    embedding_dim = 8

    def __init__(self, space: str = SPACE) -> None:
        self.space = space
        self.projection = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)

    def fingerprint(self) -> dict:
        return {"encoder": "fake", "space": self.space, "dim": 8}

    def embed(self, waveforms, *, batch_size: int = 16) -> np.ndarray:
        x = np.stack([w[:16] for w in waveforms]) @ self.projection
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def to(self, _device):
        return self


def _view(center: np.ndarray, dim: int = 8) -> TargetView:
    view = TargetView(TargetViewConfig(feature_dim=dim, embedding_dim=dim, members=2))
    view.center.copy_(torch.from_numpy(center))
    return view


def test_join_is_a_unit_vector_between_the_two_directions():
    rng = np.random.default_rng(1)
    center = (0.8 * np.eye(8)[0]).astype(np.float32)
    view = _view(center)
    tower = torch.nn.functional.normalize(
        torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32)), dim=1
    )
    other = torch.nn.functional.normalize(
        torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32)), dim=1
    )
    joined = view.join(tower, other)
    assert torch.allclose(joined.norm(dim=1), torch.ones(4), atol=1e-5)
    # seen from the centre, the joined vector points along the sum of the two unit directions
    expected = torch.nn.functional.normalize(view.direction(tower) + other, dim=1)
    assert torch.allclose(view.direction(joined), expected, atol=1e-5)
    # a view that agrees with the tower leaves the tower's direction as it was
    assert torch.allclose(
        view.direction(view.join(tower, view.direction(tower))), view.direction(tower), atol=1e-5
    )


def test_aisfx_layer_statistics_hold_the_embedding_before_pooling():
    torch.manual_seed(0)
    encoder = AisfxEncoder(AisfxConfig(base_channels=8), source="tiny")
    clips = [tone(440.0, 5.0, 44100), tone(220.0, 3.0, 44100)]
    stats = encoder.layer_statistics(clips)
    assert stats.shape == (2, 2 * 3 * 15 * 8) and stats.dtype == np.float32 and np.isfinite(stats).all()
    assert not encoder.cnn.conv_block4._forward_hooks  # the hooks are gone
    # the last block's "max over time of the mean over frequency" is the per-block embedding: its mean over
    # the clip's blocks is the unnormalised mean-pooled embedding
    width4, offset4 = 64, 3 * (8 + 16 + 32)  # block 4's channels; its mean/max/std columns start here
    with torch.no_grad():
        blocks = encoder.cnn(to_blocks(encoder.front_end(torch.from_numpy(clips[0])), encoder.config))
    np.testing.assert_allclose(stats[0, offset4 + width4 : offset4 + 2 * width4], blocks.mean(0), rtol=1e-5)
    np.testing.assert_allclose(encoder.layer_statistics(clips[:1]), stats[:1], rtol=1e-6)


def _data(num_refs: int = 6, per_ref: int = 3) -> dict:
    """Imitations whose first samples carry their reference's pattern (plus noise): learnable."""
    rng = np.random.default_rng(2)
    patterns = rng.standard_normal((num_refs, 16)).astype(np.float32)
    queries = [
        np.concatenate([patterns[r] + 0.3 * rng.standard_normal(16), np.zeros(100)]).astype(np.float32)
        for r in range(num_refs)
        for _ in range(per_ref)
    ]
    pairs = np.array([(i, i // per_ref) for i in range(len(queries))])
    references = [np.concatenate([p, np.zeros(100)]).astype(np.float32) for p in patterns]
    targets = torch.from_numpy(FakeTarget().embed(references))
    return {
        "train": PairDataset(queries, references, pairs, num_samples=116),
        "targets": targets,
        "reference_kind": torch.arange(num_refs) % 2,
        "query_features": FakeTarget().embed(queries),
    }


def test_fit_target_view_learns_the_references_and_is_deterministic():
    data, target = _data(), FakeTarget()
    view = fit_target_view(data, target, seed=3, members=2)
    again = fit_target_view(data, target, seed=3, members=2)
    for key, value in view.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    features = torch.from_numpy(target.embed(data["train"].queries))
    similarity = view.imitation_direction(features) @ view.direction(data["targets"]).T
    top = similarity.argmax(1).numpy()
    assert (top == data["train"].pairs[:, 1]).mean() >= 0.9  # chance is 1/6
    assert torch.allclose(view.center, data["targets"].mean(0))


def _model_with_view(space: str = SPACE) -> AlignedModel:
    torch.manual_seed(0)
    model = AlignedModel.from_towers(
        QvimEncoder.from_pretrained("scratch:mn01"),
        None,
        head={"in_dim": 96, "out_dim": 8, "kind": "linear"},
        clip_duration_s=0.5,
        clap_source="",
        clap_fingerprint={"encoder": "fake", "space": space, "dim": 8},
        target="aisfx",
    )
    return model.with_target_view(fit_target_view(_data(), FakeTarget(), seed=0, members=2))


def test_a_model_with_a_view_saves_loads_and_joins_both_towers(tmp_path):
    model = _model_with_view()
    loaded = AlignedModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["target_view"]["members"] == 2
    clips = _data()["train"].queries[:4]
    towers_only = loaded.towers_only()
    for tower in ("imitation", "reference"):
        plain = towers_only.eval().embedder(tower).embed(clips)
        joined = loaded.embedder(tower, target=FakeTarget()).embed(clips)
        assert np.allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-5)
        assert not np.allclose(joined, plain, atol=1e-3)  # the view moved them
        fingerprint = loaded.embedder(tower, target=FakeTarget()).fingerprint()
        assert fingerprint["target_view"]["features"] == "embedding"
        assert "target_view" not in towers_only.embedder(tower).fingerprint()  # older stores stay valid
    np.testing.assert_allclose(
        loaded.embedder("imitation", target=FakeTarget()).embed(clips),
        model.embedder("imitation", target=FakeTarget()).embed(clips),
        atol=1e-6,
    )


def test_a_view_refuses_a_target_of_another_space():
    model = _model_with_view()
    with pytest.raises(CheckpointError, match="target's weights have changed since `align`"):
        model.embedder("imitation", target=FakeTarget("fake:ffffffffffff")).embed([tone(220.0, 0.5, 32000)])


def test_align_with_the_target_view_from_the_cli(tmp_path):
    """align --target aisfx (the view is on by default for it) on tiny data; eval-retrieval of the saved
    model gives the metrics align reported for it (align's from cached features, eval's computed afresh)."""
    pytest.importorskip("aisfx")
    from qvimclap.data.synth import make_corpus

    corpus = make_corpus(tmp_path / "c", num_references=8, imitations_per_reference=2, seed=1)
    # prepare caches the view's features first (the default for aisfx), as align would
    prepared = CliRunner().invoke(
        app, ["prepare", "--data", str(corpus), "--target", "aisfx", "--no-progress"]
    )
    assert prepared.exit_code == 0 and "features of every imitation" in prepared.output, prepared.output
    assert len(list((corpus / ".qvimclap-cache").glob("features-*.h5"))) == 1
    run = tmp_path / "run"
    tiny = ["--qvim", "scratch:mn01", "--clip-seconds", "0.5", "--epochs", "1", "--batch-size", "4"]
    args = [
        "align",
        "--data",
        corpus,
        "--out",
        run,
        "--target",
        "aisfx",
        "--no-progress",
    ]  # the view: default
    trained = CliRunner().invoke(app, [str(a) for a in [*args, *tiny]])
    assert trained.exit_code == 0, trained.output
    assert "with the target view: validation MRR target" in trained.output
    summary = json.loads((run / "summary.json").read_text())["target_view"]
    assert json.loads((run / "config.json").read_text())["target_view"]["features"] == "layer-statistics"
    for space, key in (("target", "val_mrr_clap"), ("qvim", "val_mrr_qvim")):
        report = CliRunner().invoke(
            app,
            ["eval-retrieval", "--data", str(corpus), "--model", str(run), "--space", space, "--split", "val"]
            + ["--json"],
        )
        assert report.exit_code == 0, report.output
        metrics = json.loads(report.output[report.output.index("{") :])["metrics"]
        assert metrics["mrr"] == pytest.approx(summary[key], abs=1e-4), space


def test_view_features_are_computed_once_per_clip_and_recomputed_for_a_rewritten_file(tmp_path):
    from qvimclap.prepared import prepare_audio
    from qvimclap.targets import view_features

    clips = [tmp_path / f"{i}.wav" for i in range(3)]
    for i, path in enumerate(clips):
        write_audio(path, tone(200.0 + 100 * i, 0.5, 32000), 32000)
    settings = dict(root=tmp_path, cache_dir=tmp_path / "cache", sample_rate=32000, max_duration_s=10.0)
    files = prepare_audio(clips, **settings)
    target = CountingTarget()
    first = view_features(files, target, sample_rate=32000, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(first, FakeTarget().embed([np.load(f) for f in files]), atol=1e-6)
    assert target.clips == 3
    again = view_features(files[::-1], target, sample_rate=32000, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again, first[::-1])
    assert target.clips == 3  # all from the cache
    write_audio(clips[1], tone(900.0, 0.5, 32000), 32000)
    os.utime(clips[1], ns=(1, 1))  # a rewritten file: another identity, another key
    files = prepare_audio(clips, **settings)
    changed = view_features(files, target, sample_rate=32000, cache_dir=tmp_path / "cache")
    assert target.clips == 4
    np.testing.assert_array_equal(changed[[0, 2]], first[[0, 2]])
    assert not np.allclose(changed[1], first[1])
    other = CountingTarget("fake:ffffffffffff")  # another target: another store, never mixed
    view_features(files, other, sample_rate=32000, cache_dir=tmp_path / "cache")
    assert other.clips == 3 and len(list((tmp_path / "cache").glob("features-*.h5"))) == 2


class CountingTarget(FakeTarget):
    def __init__(self, space: str = SPACE) -> None:
        super().__init__(space)
        self.clips = 0

    def embed(self, waveforms, *, batch_size: int = 16) -> np.ndarray:
        self.clips += len(waveforms)
        return super().embed(waveforms, batch_size=batch_size)
