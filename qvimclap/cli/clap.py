"""``qvimclap convert-clap``: LAION CLAP ``.pt`` / AudioLDM ``.ckpt`` -> a transformers CLAP folder."""

from __future__ import annotations

from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import printable


@app.command("convert-clap")
@user_errors
def convert_clap(
    src: Path = typer.Argument(..., help="A LAION CLAP .pt or an original AudioLDM .ckpt."),
    out: Path = typer.Argument(
        ..., help="Output folder (transformers CLAP: config.json + model.safetensors)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read checkpoints holding pickled objects (only for files you trust)."
    ),
) -> None:
    """Convert a CLAP checkpoint strictly; the audio architecture is read from its tensor shapes.

    Example: qvimclap convert-clap audioldm-s-full-v2.ckpt models/clap-audioldm-s
    """
    from qvimclap.models.clap_convert import convert_clap_checkpoint

    folder = convert_clap_checkpoint(src, out, force=force, allow_pickle=allow_pickle)
    typer.echo(f"Wrote {printable(folder)}")
