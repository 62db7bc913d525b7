"""``qvimclap align`` (train an imitation encoder into a target space) and ``qvimclap eval-retrieval``
(measure it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import printable


def _default(name: str) -> Any:
    """The default of an :class:`AlignConfig` field, so the CLI and the API cannot drift apart."""
    from qvimclap.train.align import AlignConfig

    field = AlignConfig.__dataclass_fields__[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _loss_default(name: str) -> Any:
    from qvimclap.train.losses import LossConfig

    return LossConfig.__dataclass_fields__[name].default


@app.command()
@user_errors
def align(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Training dataset: pairs.csv corpus, VimSketch or QVIM-DEV."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder, e.g. runs/NAME (becomes a model folder)."),
    qvim: str = typer.Option(
        _default("qvim"), "--qvim", help="QVIM start: scratch:mnXX, EfficientAT .pt, baseline .ckpt, folder."
    ),
    target: str = typer.Option(
        None,
        "--target",
        help="Frozen embedder to align into, as embed --encoder names it: clap:scratch, clap:<path>, aisfx, "
        "aisfx:<path> (default clap:scratch).",
    ),
    clap: str = typer.Option(
        None,
        "--clap",
        help="Shorthand for --target clap:SOURCE (scratch, transformers folder, .pt, .ckpt).",
    ),
    clap_preprocessing: str = typer.Option(
        _default("clap_preprocessing"),
        "--clap-preprocessing",
        help="For a CLAP target: audioldm (16 kHz, AudioLDM's) or plain.",
    ),
    epochs: int = typer.Option(
        _default("epochs"), "--epochs", help="At most this many passes over the pairs."
    ),
    patience: int = typer.Option(
        _default("patience"),
        "--patience",
        help="Stop after this many epochs without a better validation MRR.",
    ),
    max_minutes: float = typer.Option(
        _default("max_minutes"), "--max-minutes", help="Stop after the epoch in which this much time ran out."
    ),
    batch_size: int = typer.Option(_default("batch_size"), "--batch-size", help="Pairs per step (global)."),
    lr: float = typer.Option(_default("lr"), "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    clip_seconds: float = typer.Option(
        _default("clip_duration_s"),
        "--clip-seconds",
        help="Input length: clips are zero-padded or cut to this.",
    ),
    head: str = typer.Option(_default("head"), "--head", help="Projection head: linear or mlp (2 layers)."),
    shared_towers: bool = typer.Option(
        _default("shared_towers"),
        "--shared-towers/--separate-towers",
        help="One encoder for both sides, or two.",
    ),
    loss: str = typer.Option(_loss_default("kind"), "--loss", help="infonce (in-batch negatives) or cosine."),
    w_imitation_clap: float = typer.Option(_loss_default("imitation_clap"), "--w-imitation-clap"),
    w_reference_clap: float = typer.Option(_loss_default("reference_clap"), "--w-reference-clap"),
    w_imitation_reference: float = typer.Option(
        _loss_default("imitation_reference"), "--w-imitation-reference"
    ),
    temperature: float = typer.Option(
        _loss_default("temperature"), "--temperature", help="InfoNCE temperature, imitation-reference term."
    ),
    clap_temperature: float = typer.Option(
        _loss_default("clap_temperature"),
        "--clap-temperature",
        help="InfoNCE temperature, terms against CLAP.",
    ),
    center: bool = typer.Option(
        _loss_default("center"), "--center/--no-center", help="Compare vectors minus the mean CLAP target."
    ),
    symmetric: bool = typer.Option(
        _loss_default("symmetric"), "--symmetric/--one-direction", help="InfoNCE in both directions."
    ),
    val_fraction: float = typer.Option(
        _default("val_fraction"), "--val-fraction", help="References held out."
    ),
    seed: int = typer.Option(_default("seed"), "--seed"),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Targets cache (default <data>/.qvimclap-cache)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed run from its last epoch checkpoint."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train QVIM towers + a head so imitations land on the target embedding (CLAP by default, or aisfx, ...)
    of the sound they imitate."""
    from qvimclap.errors import QvimclapError
    from qvimclap.train.align import AlignConfig, train_alignment
    from qvimclap.train.losses import LossConfig

    if target is not None and clap is not None:
        raise QvimclapError(f"--clap {clap} is the shorthand for --target clap:{clap}; pass one of them")

    loss_config = LossConfig(
        kind=loss,
        imitation_clap=w_imitation_clap,
        reference_clap=w_reference_clap,
        imitation_reference=w_imitation_reference,
        temperature=temperature,
        clap_temperature=clap_temperature,
        symmetric=symmetric,
        center=center,
    )
    config = AlignConfig(
        data=str(data),
        out=str(out),
        qvim=qvim,
        clap=_default("clap") if clap is None else clap,
        target=target,
        clap_preprocessing=clap_preprocessing,
        shared_towers=shared_towers,
        head=head,
        loss=loss_config.to_dict(),
        clip_duration_s=clip_seconds,
        epochs=epochs,
        patience=patience,
        max_minutes=max_minutes,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        cache_dir=None if cache_dir is None else str(cache_dir),
        device=device,
    )
    result = train_alignment(config, resume=resume, force=force, progress=progress)
    if result is None:  # a non-zero rank under torchrun
        return
    best = result.best_val
    typer.echo(
        f"{printable(result.run_dir)}: best epoch {result.best_epoch}, "
        f"validation MRR target ({config.target_spec}) {best['val_mrr_clap']:.4f}, "
        f"qvim {best['val_mrr_qvim']:.4f} (chance {result.history[-1].get('chance_mrr', float('nan')):.4f}), "
        f"{result.elapsed_s / 60:.1f} min"
    )
    typer.echo(
        f"model: {printable(result.run_dir)} (config.json + model.safetensors); "
        f"curves: {printable(result.run_dir / 'curves.png')}"
    )
    if result.collapsed:
        typer.echo(
            "Warning: the embeddings collapsed (see metrics.jsonl); lower --lr",
            err=True,
        )


@app.command("eval-retrieval")
@user_errors
def eval_retrieval(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset with (imitation, reference) pairs."),
    model: str = typer.Option(
        ..., "--model", "-m", help="Aligned model folder, or a QVIM checkpoint (qvim space)."
    ),
    k: int = typer.Option(5, "--k", "-k", help="Report recall@k (besides @1 and @10)."),
    space: str = typer.Option(
        "target",
        "--space",
        help="target: references by the model's frozen target embedder (clap: the same, by its first name); "
        "qvim: by the reference tower.",
    ),
    clap: str = typer.Option(
        None, "--clap", help="CLAP source for the references of a CLAP target (default: the model's target)."
    ),
    split: str = typer.Option(
        "all", "--split", help="all, or val/train: the split `qvimclap align` made (recorded in the model)."
    ),
    val_fraction: float = typer.Option(
        None, "--val-fraction", help="Split fraction (default: the model's recorded split, else 0.2)."
    ),
    seed: int = typer.Option(
        None, "--seed", help="Split seed (default: the model's recorded split, else 0)."
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Targets cache (default <data>/.qvimclap-cache)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path = typer.Option(None, "--plot", help="Write a histogram PNG of the true references' ranks."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --plot file."),
) -> None:
    """Rank all unique references for every imitation; print recall@1/@k/@10, MRR, class NDCG, chance, per
    class."""
    from qvimclap.data import open_dataset
    from qvimclap.errors import QvimclapError
    from qvimclap.evaluation import evaluate_retrieval, plot_rank_histogram
    from qvimclap.files import check_writable
    from qvimclap.targets import default_cache_dir

    # Like every other output: never overwritten without --force, and checked before the work.
    if plot is not None:
        if plot.exists() and not force:
            raise QvimclapError(
                f"{plot} already exists; pass --force to overwrite it or choose another --plot"
            )
        check_writable(plot.parent)
    dataset = open_dataset(data)
    cache = cache_dir if cache_dir is not None else default_cache_dir(dataset.root, None)
    report = evaluate_retrieval(
        dataset,
        model,
        k=k,
        space=space,
        clap=clap,
        cache_dir=cache,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
    )
    for warning in report.warnings:
        typer.echo(f"Warning: {printable(warning)}", err=True)
    if plot is not None:
        plot_rank_histogram(report, plot)
    if as_json:
        data_out = report.to_dict()
        data_out["plot"] = None if plot is None else str(plot)
        typer.echo(json.dumps(data_out, indent=2))
        return
    typer.echo(report.format())
    if plot is not None:
        typer.echo(f"\nrank histogram: {printable(plot)}")
