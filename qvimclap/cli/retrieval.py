"""``qvimclap embed``, ``index`` and ``search``: index a sound library, query it by imitation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import printable


@app.command()
@user_errors
def embed(
    data: Path = typer.Argument(
        ..., help="Dataset folder or CSV (pairs.csv, VimSketch, QVIM dev) or audio folder."
    ),
    encoder: str = typer.Option(
        ...,
        "--encoder",
        "-e",
        help="clap:scratch, clap:<path>, qvim:scratch:mn04, qvim:<ckpt>, aisfx, aisfx:<path>, <aligned dir>.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Store to write, e.g. embeddings/NAME.h5."),
    items: str = typer.Option("references", "--items", help="references, queries or all."),
    batch_size: int = typer.Option(16, "--batch-size", help="Clips per forward pass (and per commit)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing store instead of resuming it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: int = typer.Option(
        0, "--workers", help="Processes decoding audio while the model runs (0: decode in this process)."
    ),
) -> None:
    """Embed a dataset into an HDF5 store; a re-run resumes, skipping what is already stored.

    Under torchrun (`torchrun --nproc-per-node N -m qvimclap.cli embed ...`) each process embeds its shard of
    the files into its own store beside --out (NAME.shard-RANK-of-N.h5); `qvimclap index` given the same
    --out reads them all."""
    from qvimclap.api import embed_dataset

    report = embed_dataset(
        data,
        encoder,
        out,
        force=force,
        batch_size=batch_size,
        items=items,
        progress=progress,
        workers=workers,
    )
    typer.echo(
        f"{printable(report.store_path)}: added {report.num_added}, already stored {report.num_skipped}, "
        f"unusable {len(report.failures)} (of {report.num_items} files)"
    )
    if report.failures:
        typer.echo(f"Skipped {len(report.failures)} unusable file(s):", err=True)
        for failure in report.failures:
            typer.echo(f"  {printable(failure.reason)}", err=True)


@app.command()
@user_errors
def index(
    stores: list[str] = typer.Argument(
        ...,
        help="Embedding store(s) written by `qvimclap embed`: a store, the --out of a parallel embed "
        "(all its shards), a glob, or several stores of one fingerprint.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Index file to write, e.g. indexes/NAME.faiss."),
    kind: str = typer.Option(
        "flat",
        "--kind",
        help="flat (exact), hnsw, ivf, ivfpq (compressed, re-ranked against the store) or auto (by size and "
        "--max-memory).",
    ),
    max_memory: str = typer.Option(
        None,
        "--max-memory",
        help="Memory budget of the index, e.g. 4G (default: half of this machine's RAM).",
    ),
    center: bool = typer.Option(
        True, "--center/--no-center", help="Score by cosine after subtracting the library's mean vector."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing index file."),
) -> None:
    """Build an inner-product index over a store (or the shards of a parallel embed); prints the memory it
    will need before it builds."""
    from qvimclap.api import build_index, plan_index
    from qvimclap.index import check_output_path

    check_output_path(out, force)  # say so before counting a large library
    plan = plan_index(stores, kind=kind, max_memory=max_memory)
    typer.echo(f"building {printable(plan.describe())}")
    path = build_index(stores, out, center=center, force=force, plan=plan)
    centring = "centred on the library mean" if center and plan.num_vectors > 1 else "raw cosine"
    typer.echo(
        f"{printable(path)}: {plan.kind} index of {plan.num_vectors} vectors, dim {plan.dim}, {centring}"
    )


@app.command()
@user_errors
def search(
    audio: Path = typer.Argument(..., help="The query: a vocal imitation (audio file)."),
    index_path: Path = typer.Option(..., "--index", "-i", help="Index file written by `qvimclap index`."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    encoder: str = typer.Option(
        None, "--encoder", "-e", help="Query encoder spec (default: the one recorded with the index)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find the stored sounds nearest to an imitation; prints rank, score, id and path."""
    from qvimclap.api import search as api_search

    hits = api_search(audio, index_path, k, encoder=encoder)
    if as_json:
        typer.echo(json.dumps([hit.to_dict() for hit in hits], indent=2, ensure_ascii=False))
        return
    typer.echo(f"{'rank':>4}  {'score':>7}  id  path")
    for hit in hits:
        typer.echo(f"{hit.rank:>4}  {hit.score:7.4f}  {printable(hit.id)}  {printable(hit.path)}")
