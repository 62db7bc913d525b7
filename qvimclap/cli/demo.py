"""`qvimclap demo`: the main job on the embedded default, end to end, with no downloads."""

from __future__ import annotations

from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.demo import DEMO_REFERENCES, DemoResult


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(
        Path("demo"), "--out", "-o", help="Folder for the corpus, model, store and index."
    ),
    refs: int = typer.Option(DEMO_REFERENCES, help="References in the synthetic corpus (20% are held out)."),
    imitations: int = typer.Option(3, help="Vocal imitations per reference."),
    seed: int = typer.Option(0, help="Seed of the corpus, the split and training."),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Frozen embedder to align into: aisfx (default when installed and not generating), "
        "clap:scratch (the default otherwise; only a CLAP target can generate) or any align --target spec.",
    ),
    audioldm: str | None = typer.Option(
        None,
        envvar="QVIMCLAP_AUDIOLDM_DIR",
        help="A diffusers AudioLDM folder: also generate sound from a held-out imitation.",
    ),
    force: bool = typer.Option(False, "--force", help="Run again into an existing folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Synthesise a corpus, align an imitation encoder into a target space (aisfx when installed, else the
    scratch CLAP), evaluate, index and search."""
    from qvimclap.demo import run_demo

    result = run_demo(
        out,
        num_references=refs,
        imitations_per_reference=imitations,
        seed=seed,
        target=target,
        audioldm=audioldm,
        force=force,
        progress=progress,
    )
    typer.echo(format_demo(result))


_TARGET_NOTES = {
    "aisfx": " (the pretrained aiSFX sound-effects embedding; --target clap:scratch for the CLAP path)",
    "clap:scratch": " (a seeded random CLAP: its space does not group sounds by kind; install aisfx for a "
    "pretrained one)",
}


def format_demo(result: DemoResult) -> str:
    """What `qvimclap demo` prints: both spaces' metrics, one search, timings and where outputs are."""
    from qvimclap.errors import printable
    from qvimclap.generation import DOWNLOAD_HINT

    lines = ["", f"target space: {result.target}{_TARGET_NOTES.get(result.target, '')}"]
    lines.append(
        f"training: best epoch {result.best_epoch} of {result.epochs_trained}"
        + (f"; stopped: {result.stopped}" if result.stopped else "")
    )
    if result.stopped is not None and result.epochs_trained <= 1:
        lines.append(
            "  the scores below are a first epoch's model, near chance: the machine was too busy or slow for "
            "the time budget to fit more training; run the demo again on an idle machine"
        )
    lines.append("")
    for report in result.reports.values():
        title, metrics = report.format().split("\n\n")[:2]  # without the per-class table
        lines.append(f"{title}\n{metrics}\n")
    lines.append(
        f"search: {printable(result.query_path.name)} imitates {printable(result.true_reference.name)}, "
        f"found at rank {result.true_rank} of {result.num_indexed}"
    )
    for hit, kind in zip(result.hits[:5], result.hit_kinds or [None] * 5, strict=False):
        mark = (
            "  <- the imitated sound" if Path(hit.path).resolve() == result.true_reference.resolve() else ""
        )
        lines.append(
            f"  {hit.rank:>2}  {hit.score:.3f}  {printable(hit.id)}" + (f"  [{kind}]" if kind else "") + mark
        )
    kinds = result.hit_kinds[:5]
    if kinds and all(kinds) and result.true_kind:
        same = sum(k == result.true_kind for k in kinds)
        lines.append(f"  {same} of the top {len(kinds)} are of the imitated kind ({result.true_kind})")
    lines.append("")
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.timings_s.items())
    lines.append(f"time: {timings}")
    lines.append(f"corpus  {printable(result.corpus_dir)}")
    lines.append(f"model   {printable(result.model_dir)}   (metrics.jsonl, curves.png inside)")
    lines.append(f"store   {printable(result.store_path)}")
    lines.append(f"index   {printable(result.index_path)}")
    if result.generated_path is not None:
        lines.append(
            f"sound   {printable(result.generated_path)}   "
            f"(generated from {printable(result.query_path.name)})"
        )
    else:
        lines.append(f"generate: not run (no --audioldm); to generate, {DOWNLOAD_HINT}")
    lines.append(
        f"next:   qvimclap search IMITATION.wav --index {printable(result.index_path)} "
        f"--encoder {printable(result.model_dir)}"
    )
    lines.append(
        f"        qvimclap serve --index {result.index_path} --model {result.model_dir}"
        "   (then open http://127.0.0.1:8000/ and hum)"
    )
    return "\n".join(lines)
