"""Retrieval evaluation: numbers against a hand-worked example, and the CLI end to end on a tiny corpus."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from qvimclap.cli import app
from qvimclap.evaluation import evaluate_retrieval, plot_rank_histogram

RATE = 16000
# file length (samples) -> vector; references r0 r1 r2 are the axes
REFERENCES = {"r0": (1600, "a", [1, 0, 0]), "r1": (1700, "b", [0, 1, 0]), "r2": (1800, "a", [0, 0, 1])}
QUERIES = {  # name: (length, true reference, vector) -> similarities give the ranks in the comments
    "q0": (2000, "r0", [0.9, 0.1, 0.3]),  # r0 r2 r1: rank 1
    "q1": (2100, "r1", [0.5, 0.2, 0.8]),  # r2 r0 r1: rank 3
    "q2": (2200, "r2", [0.6, 0.1, 0.5]),  # r0 r2 r1: rank 2
    "q3": (2300, "r0", [0.2, 0.9, 0.1]),  # r1 r0 r2: rank 2
}


class LookupEmbedder:
    """Maps each test file (recognised by its length) to its hand-chosen vector."""

    sample_rate = RATE
    embedding_dim = 3

    def __init__(self) -> None:
        table = {n: v for n, _, v in REFERENCES.values()}
        table |= {n: v for n, _, v in QUERIES.values()}
        self.table = {n: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for n, v in table.items()}

    def fingerprint(self) -> dict:
        return {"encoder": "lookup", "space": "test", "dim": 3}

    def embed(self, waveforms, *, batch_size: int = 16) -> np.ndarray:
        return np.stack([self.table[len(w)] for w in waveforms])


@pytest.fixture
def hand_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("references", "imitations"):
        (tmp_path / folder).mkdir()
    for name, (n, _, _) in REFERENCES.items():
        sf.write(tmp_path / "references" / f"{name}.wav", 0.1 * rng.standard_normal(n), RATE)
    lines = ["imitation,reference,label"]
    for name, (n, ref, _) in QUERIES.items():
        sf.write(tmp_path / "imitations" / f"{name}.wav", 0.1 * rng.standard_normal(n), RATE)
        lines.append(f"imitations/{name}.wav,references/{ref}.wav,{REFERENCES[ref][1]}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_metrics_match_the_hand_worked_example(hand_dataset, tmp_path):
    embedder = LookupEmbedder()
    report = evaluate_retrieval(hand_dataset, (embedder, embedder), k=2, space="qvim")
    np.testing.assert_array_equal(report.ranks, [1, 3, 2, 2])
    assert report.num_queries == 4 and report.num_references == 3
    assert report.metrics["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    assert report.metrics["recall@1"] == pytest.approx(0.25)
    assert report.metrics["recall@2"] == pytest.approx(0.75)
    assert report.metrics["recall@10"] == pytest.approx(1.0)
    d = [1 / math.log2(i + 2) for i in range(3)]  # DCG discounts of ranks 1..3
    ndcg = [1.0, d[2] / d[0], 1.0, (d[1] + d[2]) / (d[0] + d[1])]  # relevance = same class as the query
    assert report.metrics["class_ndcg"] == pytest.approx(np.mean(ndcg))
    assert report.chance["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert report.chance["recall@2"] == pytest.approx(2 / 3)
    per_class = {row["label"]: row for row in report.per_class}
    assert per_class["a"]["num_queries"] == 3 and per_class["a"]["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert per_class["b"]["mrr"] == pytest.approx(1 / 3) and per_class["b"]["recall@2"] == 0.0
    assert "| a | 3 |" in report.format()
    json.dumps(report.to_dict())  # JSON-able
    png = plot_rank_histogram(report, tmp_path / "ranks.png")
    assert png.stat().st_size > 1000


def test_unknown_space_and_plain_qvim_in_clap_space_are_refused(hand_dataset):
    from qvimclap.errors import CheckpointError, QvimclapError

    with pytest.raises(QvimclapError, match="space must be one of"):
        evaluate_retrieval(hand_dataset, "whatever", space="text")
    with pytest.raises(CheckpointError, match="use --space qvim"):
        evaluate_retrieval(hand_dataset, "qvim:scratch:mn01", space="clap")
    for space in ("target", "qvim"):  # a path that is not there is said to be missing, in either space
        with pytest.raises(CheckpointError, match=r"nowhere/run'?: no such"):
            evaluate_retrieval(hand_dataset, "/nowhere/run", space=space)


def test_cli_align_then_eval_retrieval_end_to_end(tmp_path):
    from qvimclap.data.synth import make_corpus
    from qvimclap.models.qvim import QvimEncoder

    corpus = make_corpus(tmp_path / "corpus", num_references=6, imitations_per_reference=2, seed=5)
    run = tmp_path / "run"
    runner = CliRunner()
    args = [
        "align", "--data", str(corpus), "--out", str(run), "--qvim", "scratch:mn01", "--clip-seconds", "0.5",
        "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.34", "--no-progress",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output

    for space in ("clap", "qvim"):
        plot = tmp_path / f"{space}.png"
        result = runner.invoke(
            app,
            ["eval-retrieval", "--data", str(corpus), "--model", str(run), "--k", "2", "--space", space,
             "--split", "val", "--val-fraction", "0.34", "--json", "--plot", str(plot)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["num_references"] == 2 and report["num_queries"] == 4
        assert {
            "recall@1",
            "recall@2",
            "recall@10",
            "mrr",
            "class_ndcg",
            "class@1",
            "within_class_mrr",
        } == set(report["metrics"])
        assert plot.is_file()
    # the recorded split: --split val without --val-fraction/--seed is training's validation, MRR and all
    recorded = runner.invoke(
        app, ["eval-retrieval", "--data", str(corpus), "--model", str(run), "--split", "val", "--json"]
    )
    assert recorded.exit_code == 0 and "Warning" not in recorded.output, recorded.output
    report = json.loads(recorded.output)
    assert report["num_queries"] == 4 and report["split"] == "val" and report["warnings"] == []
    summary = json.loads((run / "summary.json").read_text())
    assert report["metrics"]["mrr"] == pytest.approx(summary["best"]["val_mrr_clap"], abs=1e-5)
    table = runner.invoke(app, ["eval-retrieval", "--data", str(corpus), "--model", str(run)])
    assert table.exit_code == 0 and "| mrr |" in table.output and "12 queries, 6 references" in table.output
    assert "Warning: 4 of the 6 references evaluated were training references" in table.output
    train = runner.invoke(
        app, ["eval-retrieval", "--data", str(corpus), "--model", str(run), "--split", "train", "--json"]
    )
    assert train.exit_code == 0 and "--split train evaluates the training references" in train.output

    # a plain QVIM encoder: QVIM space works, CLAP space is a one-line user error
    QvimEncoder.from_pretrained("scratch:mn01").save_pretrained(tmp_path / "qvim")
    ok = runner.invoke(
        app, ["eval-retrieval", "--data", str(corpus), "--model", str(tmp_path / "qvim"), "--space", "qvim"]
    )
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["eval-retrieval", "--data", str(corpus), "--model", str(tmp_path / "qvim")])
    assert bad.exit_code == 2 and "use --space qvim" in bad.output
