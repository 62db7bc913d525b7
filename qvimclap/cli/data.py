"""``qvimclap synth`` (make the built-in imitation corpus) and ``qvimclap data check`` (inspect a dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import printable

#: Exit code of ``data check`` when the dataset reads but some files are unusable.
UNUSABLE_FILES_EXIT = 1

data_app = typer.Typer(
    name="data",
    help="Inspect datasets (VimSketch, QVIM-DEV, pairs.csv, audio folders).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@app.command()
@user_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write the corpus to (must not exist, unless --force)."),
    refs: int = typer.Option(200, "--refs", help="Number of reference sounds."),
    imitations: int = typer.Option(3, "--imitations", help="Vocal imitations per reference."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same corpus."),
    force: bool = typer.Option(False, "--force", help="Replace an existing corpus folder."),
    family: str = typer.Option(
        "synth",
        "--family",
        help="Corpus family: 'synth' (14 kinds, controls re-voiced) or 'foley' (12 other kinds, another "
        "imitator that listens and hums, whistles, hisses or beatboxes).",
    ),
) -> None:
    """Write a built-in imitation corpus (synthetic sounds and vocal imitations of them) as pairs.csv."""
    from qvimclap.data.synth import make_corpus

    folder = make_corpus(
        out, num_references=refs, imitations_per_reference=imitations, seed=seed, force=force, family=family
    )
    typer.echo(f"{printable(folder)}: {refs} references, {refs * imitations} imitations (pairs.csv)")


@data_app.command("check")
@user_errors
def check(
    path: Path = typer.Argument(..., help="Dataset folder or its CSV (pairs.csv, 'DEV Dataset.csv')."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Count references, queries and classes, summarise durations and rates, list every unusable file.

    Layouts: VimSketch (references/, vocal_imitations/ and their *_file_names.csv), QVIM-DEV
    ('DEV Dataset.csv', Items/<Class>/, Queries/<Class>/), a pairs.csv (imitation,reference[,label], paths
    relative to it) or a plain folder of audio files. Exits 1 when any file is missing, unreadable or silent.
    """
    from qvimclap.data.check import check_dataset

    report = check_dataset(path, progress=progress)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.ok:
        raise typer.Exit(code=UNUSABLE_FILES_EXIT)
