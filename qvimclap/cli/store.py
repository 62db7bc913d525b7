"""``qvimclap store merge``: one store from the shards of a parallel embed (or stores of one fingerprint)."""

from __future__ import annotations

from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import printable

store_app = typer.Typer(name="store", help="Work with embedding stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("merge")
@user_errors
def merge(
    stores: list[str] = typer.Argument(
        ...,
        help="The --out of a parallel embed (all its shards), a glob, or several stores of one fingerprint.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Store to write, e.g. embeddings/NAME.h5."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing store at --out."),
) -> None:
    """Merge stores into one (refusing mixed fingerprints and ids stored twice)."""
    from qvimclap.api import merge_stores, open_store

    path = merge_stores(stores, out, force=force)
    with open_store(path) as merged:
        typer.echo(f"{printable(path)}: {len(merged)} embeddings of dim {merged.dim}")
