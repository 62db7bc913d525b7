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


def _given(help_text: str, name: str, loss: bool = False) -> str:
    """Help text that states the default (options default to None so a preset can fill what is not given)."""
    value = _loss_default(name) if loss else _default(name)
    return f"{help_text} (default without --preset: {value})".strip()


@app.command()
@user_errors
def align(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Training dataset: pairs.csv corpus, VimSketch or QVIM-DEV."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder, e.g. runs/NAME (becomes a model folder)."),
    preset: str = typer.Option(
        None,
        "--preset",
        help="Start from a named preset (demo-cpu, qvim-baseline, clap-align); options given override it.",
    ),
    qvim: str = typer.Option(
        None,
        "--qvim",
        help=_given("QVIM start: scratch:mnXX, EfficientAT .pt, baseline .ckpt, folder.", "qvim"),
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
        None,
        "--clap-preprocessing",
        help=_given("For a CLAP target: audioldm (16 kHz, AudioLDM's) or plain.", "clap_preprocessing"),
    ),
    epochs: int = typer.Option(
        None, "--epochs", help=_given("At most this many passes over the pairs.", "epochs")
    ),
    patience: int = typer.Option(
        None,
        "--patience",
        help=_given("Stop after this many epochs without a better validation MRR.", "patience"),
    ),
    max_minutes: float = typer.Option(
        None,
        "--max-minutes",
        help=_given(
            "A ceiling on the run's wall time: no epoch starts that could not end within it.", "max_minutes"
        ),
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help=_given("Pairs per step (global).", "batch_size")
    ),
    lr: float = typer.Option(
        None, "--lr", help=_given("Peak learning rate (AdamW, warm-up then cosine).", "lr")
    ),
    clip_seconds: float = typer.Option(
        None,
        "--clip-seconds",
        help=_given("Input length: clips are zero-padded or cut to this.", "clip_duration_s"),
    ),
    head: str = typer.Option(
        None, "--head", help=_given("Projection head: linear or mlp (2 layers).", "head")
    ),
    shared_towers: bool = typer.Option(
        None,
        "--shared-towers/--separate-towers",
        help=_given("One encoder for both sides, or two.", "shared_towers"),
    ),
    loss: str = typer.Option(
        None, "--loss", help=_given("infonce (in-batch negatives) or cosine.", "kind", True)
    ),
    w_imitation_clap: float = typer.Option(
        None, "--w-imitation-clap", help=_given("", "imitation_clap", True)
    ),
    w_reference_clap: float = typer.Option(
        None, "--w-reference-clap", help=_given("", "reference_clap", True)
    ),
    w_imitation_reference: float = typer.Option(
        None, "--w-imitation-reference", help=_given("", "imitation_reference", True)
    ),
    w_imitation_kind: float = typer.Option(
        None,
        "--w-imitation-kind",
        help=_given(
            "Weight of the term that asks each imitation to pick its reference's kind (label) among the "
            "training targets.",
            "imitation_kind",
            True,
        ),
    ),
    temperature: float = typer.Option(
        None,
        "--temperature",
        help=_given("InfoNCE temperature, imitation-reference term.", "temperature", True),
    ),
    clap_temperature: float = typer.Option(
        None,
        "--clap-temperature",
        help=_given("InfoNCE temperature, terms against CLAP.", "clap_temperature", True),
    ),
    center: bool = typer.Option(
        None,
        "--center/--no-center",
        help=_given("Compare vectors minus the mean CLAP target.", "center", True),
    ),
    symmetric: bool = typer.Option(
        None, "--symmetric/--one-direction", help=_given("InfoNCE in both directions.", "symmetric", True)
    ),
    target_negatives: str = typer.Option(
        None,
        "--target-negatives",
        help=_given(
            "Terms against the targets contrast with: all (every training reference's) or batch.",
            "target_negatives",
            True,
        ),
    ),
    random_pad: bool = typer.Option(
        None,
        "--random-pad/--pad-at-end",
        help=_given("Place a training clip shorter than --clip-seconds at a random offset.", "random_pad"),
    ),
    speed_perturb: float = typer.Option(
        None,
        "--speed-perturb",
        help=_given(
            "Play each training imitation at a random speed in [1/(1+x), 1+x] (pitch and tempo); 0: off.",
            "speed_perturb",
        ),
    ),
    target_view: bool = typer.Option(
        None,
        "--target-view/--towers-only",
        help=_given(
            "Join the target's own view of each clip to the towers (an MLP on the frozen target's "
            "features of an imitation; a reference's target embedding). Default: on for an aisfx target.",
            "target_view",
        ),
    ),
    val_fraction: float = typer.Option(
        None, "--val-fraction", help=_given("References held out.", "val_fraction")
    ),
    seed: int = typer.Option(None, "--seed", help=_given("", "seed")),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Targets cache (default <data>/.qvimclap-cache)."
    ),
    device: str = typer.Option(
        None,
        "--device",
        help=_given("auto (a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N.", "device"),
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
    from qvimclap.train.align import train_alignment
    from qvimclap.train.presets import resolve_align_config

    if target is not None and clap is not None:
        raise QvimclapError(f"--clap {clap} is the shorthand for --target clap:{clap}; pass one of them")
    loss_given = {
        "kind": loss,
        "imitation_clap": w_imitation_clap,
        "reference_clap": w_reference_clap,
        "imitation_reference": w_imitation_reference,
        "imitation_kind": w_imitation_kind,
        "temperature": temperature,
        "clap_temperature": clap_temperature,
        "symmetric": symmetric,
        "center": center,
        "target_negatives": target_negatives,
    }
    given = {
        "qvim": qvim,
        "clap": clap,
        "target": target,
        "clap_preprocessing": clap_preprocessing,
        "shared_towers": shared_towers,
        "head": head,
        "clip_duration_s": clip_seconds,
        "random_pad": random_pad,
        "speed_perturb": speed_perturb,
        "target_view": target_view,
        "epochs": epochs,
        "patience": patience,
        "max_minutes": max_minutes,
        "batch_size": batch_size,
        "lr": lr,
        "val_fraction": val_fraction,
        "seed": seed,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "device": device,
        "loss": {k: v for k, v in loss_given.items() if v is not None},
    }
    overrides = {k: v for k, v in given.items() if v is not None and v != {}}
    config = resolve_align_config(data=str(data), out=str(out), preset=preset, overrides=overrides)
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
    if result.target_view is not None:
        view = result.target_view
        typer.echo(
            f"with the target view: validation MRR target {view['val_mrr_clap']:.4f}, "
            f"qvim {view['val_mrr_qvim']:.4f} (saved)"
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


@app.command()
@user_errors
def prepare(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset: pairs.csv corpus, VimSketch or QVIM-DEV."),
    target: str = typer.Option(
        None,
        "--target",
        help="Frozen embedder of the targets: clap:scratch, clap:<path>, aisfx, aisfx:<path>.",
    ),
    clap: str = typer.Option(None, "--clap", help="Shorthand for --target clap:SOURCE."),
    clap_preprocessing: str = typer.Option("audioldm", "--clap-preprocessing", help="For a CLAP target."),
    no_target: bool = typer.Option(False, "--no-target", help="Decode the clips only."),
    target_view: bool = typer.Option(
        None,
        "--target-view/--towers-only",
        help="Also cache the target's features of every imitation, which align's target view trains on "
        "(default: for an aisfx target, as align).",
    ),
    clip_seconds: float = typer.Option(
        _default("clip_duration_s"),
        "--clip-seconds",
        help="The clip length align will use (decoded: max(this, 10 s)).",
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Cache folder (default <data>/.qvimclap-cache)."
    ),
    device: str = typer.Option("auto", "--device", help="Where the targets are computed: auto, cpu, cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Decode every clip once into a memory-mapped cache and embed every reference with the frozen target
    (what align and eval-retrieval would otherwise do on first use); resumable after a kill."""
    from qvimclap.errors import QvimclapError
    from qvimclap.models.aligned import SAMPLE_RATE
    from qvimclap.models.target import load_target, target_view_by_default
    from qvimclap.prepared import prepare_dataset

    if target is not None and clap is not None:
        raise QvimclapError(f"--clap {clap} is the shorthand for --target clap:{clap}; pass one of them")
    spec = target or f"clap:{clap or _default('clap')}"
    embedder = None if no_target else load_target(spec, clap_preprocessing=clap_preprocessing)
    if target_view is None:
        target_view = target_view_by_default(spec)
    prepared = prepare_dataset(
        data,
        target=embedder,
        cache_dir=cache_dir,
        sample_rate=SAMPLE_RATE,
        max_duration_s=max(clip_seconds, 10.0),
        device=device,
        view_features=target_view,
        progress=progress,
    )
    what = "no targets" if embedder is None else f"targets of {spec}"
    if prepared.query_features is not None:
        what += " and its features of every imitation (the target view's)"
    typer.echo(
        f"{prepared.cache_dir}: {len(prepared.query_files)} imitations and {len(prepared.reference_files)} "
        f"references decoded, {what}"
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
    from qvimclap.prepared import cache_dir_for

    # Like every other output: never overwritten without --force, and checked before the work.
    if plot is not None:
        if plot.exists() and not force:
            raise QvimclapError(
                f"{plot} already exists; pass --force to overwrite it or choose another --plot"
            )
        check_writable(plot.parent)
    dataset = open_dataset(data)
    cache = cache_dir_for(dataset.root, cache_dir)
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
