"""`qvimclap demo`: the main job on the embedded default, end to end, with no downloads."""

from __future__ import annotations

from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(
        Path("demo"), "--out", "-o", help="Folder for the corpus, model, store and index."
    ),
    refs: int = typer.Option(500, help="References in the synthetic corpus (20% are held out)."),
    imitations: int = typer.Option(3, help="Vocal imitations per reference."),
    seed: int = typer.Option(0, help="Seed of the corpus, the split and training."),
    audioldm: str | None = typer.Option(
        None,
        envvar="QVIMCLAP_AUDIOLDM_DIR",
        help="A diffusers AudioLDM folder: also generate sound from a held-out imitation.",
    ),
    force: bool = typer.Option(False, "--force", help="Run again into an existing folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Synthesise a corpus, align an imitation encoder into CLAP space, evaluate, index and search."""
    from qvimclap.demo import run_demo
    from qvimclap.generation import DOWNLOAD_HINT

    result = run_demo(
        out,
        num_references=refs,
        imitations_per_reference=imitations,
        seed=seed,
        audioldm=audioldm,
        force=force,
        progress=progress,
    )
    typer.echo("")
    for report in result.reports.values():
        typer.echo(report.format().split("\n\n")[0])  # the metrics table, without the per-class rows
        typer.echo("")
    typer.echo(f"search: {result.query_path.name}  (imitates {result.true_reference.name})")
    for hit in result.hits:
        mark = (
            "  <- the imitated sound" if Path(hit.path).resolve() == result.true_reference.resolve() else ""
        )
        typer.echo(f"  {hit.rank:>2}  {hit.score:.3f}  {hit.id}{mark}")
    typer.echo("")
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.timings_s.items())
    typer.echo(f"time: {timings}")
    typer.echo(f"corpus  {result.corpus_dir}")
    typer.echo(f"model   {result.model_dir}   (metrics.jsonl, curves.png inside)")
    typer.echo(f"store   {result.store_path}")
    typer.echo(f"index   {result.index_path}")
    if result.generated_path is not None:
        typer.echo(f"sound   {result.generated_path}   (generated from {result.query_path.name})")
    else:
        typer.echo(f"generate: not run (no --audioldm); to generate, {DOWNLOAD_HINT}")
    typer.echo(
        f"next:   qvimclap search IMITATION.wav --index {result.index_path} --encoder {result.model_dir}"
    )
