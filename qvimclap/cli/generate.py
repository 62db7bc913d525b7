"""``qvimclap generate``: find it or make it — sound from a vocal imitation through an unmodified AudioLDM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from qvimclap.cli._app import app, user_errors
from qvimclap.errors import QvimclapError, printable
from qvimclap.files import check_writable


@app.command()
@user_errors
def generate(
    imitation: Path = typer.Argument(..., help="The vocal imitation (any audio file libsndfile reads)."),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Condition embedder: an aligned model folder, or clap:scratch / clap:<path>.",
    ),
    audioldm: str = typer.Option(
        ...,
        "--audioldm",
        help="A diffusers AudioLDM folder (e.g. a copy of cvssp/audioldm-s-full-v2) or cached hub id.",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output WAV (16 kHz). Default: <imitation>_generated.wav."
    ),
    duration: float = typer.Option(5.0, "--duration", help="Seconds; rounded up to AudioLDM's 40 ms steps."),
    steps: int = typer.Option(50, "--steps", help="Denoising steps (AudioLDM's own default is 200)."),
    guidance: float = typer.Option(
        2.5, "--guidance", help="Classifier-free guidance scale (<= 1 disables it)."
    ),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0 = deterministic sampler)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise; fixes every candidate."),
    candidates: int = typer.Option(
        3, "--candidates", "-n", help="Candidates to sample and re-rank; the best is written."
    ),
    scheduler: str = typer.Option("ddim", "--scheduler", help="ddim, dpm, pndm, lms or euler."),
    text: str = typer.Option(
        None, "--text", help="Also condition on this text (AudioLDM's CLAP text tower)."
    ),
    text_weight: float = typer.Option(
        0.5, "--text-weight", help="Condition = normalize(w * text + (1 - w) * imitation), w in [0, 1]."
    ),
    clap: str = typer.Option(
        None,
        "--clap",
        help="CLAP that re-ranks candidates (default: the model's own CLAP, or the model if CLAP).",
    ),
    retrieve: Path = typer.Option(
        None, "--retrieve", help="Also print the nearest real sounds from this index."
    ),
    k: int = typer.Option(5, "-k", help="How many sounds --retrieve prints."),
    keep_all: bool = typer.Option(
        False, "--keep-all", help="Also write every other candidate as <out>.rankN.wav."
    ),
    plot: bool = typer.Option(False, "--plot", help="Write <out>.png: imitation and result spectrograms."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Generate a sound from a vocal imitation: embed it into CLAP space and condition AudioLDM on it."""
    from qvimclap import generation as gen
    from qvimclap.audio import load_audio, write_audio

    # 1. Validate everything cheap before loading models; refuse to overwrite.
    config = gen.GenerationConfig(
        duration_s=duration,
        num_steps=steps,
        guidance_scale=guidance,
        eta=eta,
        seed=seed,
        num_candidates=candidates,
        scheduler=scheduler,
    )
    out = out if out is not None else Path(f"{imitation.stem}_generated.wav")
    paths = output_paths(out, num_candidates=candidates, keep_all=keep_all, plot=plot)
    if text is not None:
        gen.check_text_weight(text_weight)
    _refuse_existing(paths, force)
    check_writable(out.parent)  # a read-only or full folder fails now, not after the whole run
    gen.resolve_audioldm_dir(audioldm)  # missing weights: say where to put them before any slow work

    # 2. The imitation and its condition; a silent or unreadable file stops here, before anything is written.
    embedder = _load_embedder(model)
    waveform = load_audio(imitation, embedder.sample_rate)
    condition = gen.embed_imitation(waveform, embedder.sample_rate, embedder, source=str(imitation))
    if retrieve is not None:
        _print_retrieval(retrieve, condition, embedder.fingerprint(), k)

    # 3. Generate and re-rank.
    reranker = _rerank_embedder(embedder, clap, candidates)
    ldm = gen.load_audioldm(audioldm)
    with typer.progressbar(length=steps, label="denoising", file=sys.stderr) as bar:
        result = gen.generate_from_imitation(
            waveform,
            embedder.sample_rate,
            embedder,
            ldm,
            config,
            text=text,
            text_weight=text_weight,
            rerank_embedder=reranker,
            on_step=lambda i, n: bar.update(round(i * steps / n) - bar.pos),  # pndm adds warm-up steps
        )

    # 4. Write (each file atomically) and report.
    written = [
        write_audio(p, w, result.sample_rate) for p, w in zip(paths["audio"], result.waveforms, strict=False)
    ]
    if plot:
        gen.save_comparison_plot(
            paths["plot"], waveform, embedder.sample_rate, result.waveforms[0], result.sample_rate
        )
    _print_candidates(result, written, candidates)
    if plot:
        typer.echo(f"spectrograms: {printable(paths['plot'])}")


def output_paths(out: Path, *, num_candidates: int, keep_all: bool, plot: bool) -> dict[str, Any]:
    """``{"audio": [best, rank2, ...], "plot": png or None}``; rank files are ``<stem>.rankN<suffix>``."""
    if out.suffix.lower() != ".wav":
        raise QvimclapError(f"--out {out}: give a .wav file name")
    audio = [out] + (
        [out.with_name(f"{out.stem}.rank{r}{out.suffix}") for r in range(2, num_candidates + 1)]
        if keep_all
        else []
    )
    return {"audio": audio, "plot": out.with_suffix(".png") if plot else None}


def _refuse_existing(paths: dict[str, Any], force: bool) -> None:
    existing = [p for p in [*paths["audio"], paths["plot"]] if p is not None and p.exists()]
    if existing and not force:
        raise QvimclapError(
            f"{existing[0]} already exists; pass --force to overwrite or choose another --out"
        )


def _load_embedder(spec: str) -> Any:
    """The condition (or re-ranking) embedder for a spec, through :func:`qvimclap.api.load_embedder`."""
    from qvimclap.api import load_embedder

    return load_embedder(spec)


def _rerank_embedder(embedder: Any, clap_spec: str | None, num_candidates: int) -> Any | None:
    """``--clap`` if given; else the condition embedder when it is a CLAP; else the CLAP the aligned model was
    trained against. None (no re-ranking) only for a single candidate."""
    fingerprint = embedder.fingerprint()
    if clap_spec is None and fingerprint.get("encoder") == "clap":
        return embedder
    if clap_spec is None and fingerprint.get("clap_source"):
        clap_spec = str(fingerprint["clap_source"])
    if clap_spec is None:
        if num_candidates > 1:
            raise QvimclapError(
                f"--model {fingerprint.get('encoder')} does not record its CLAP; pass --clap SPEC to re-rank "
                f"{num_candidates} candidates, or --candidates 1"
            )
        return None
    return _load_embedder(clap_spec if clap_spec.startswith("clap:") else f"clap:{clap_spec}")


def _print_retrieval(index_path: Path, condition: Any, fingerprint: dict[str, Any], k: int) -> None:
    """Print the ``k`` nearest indexed sounds to the condition (the index must be in the model's space)."""
    from qvimclap import api

    index = api.load_index(index_path)
    api.check_query_space(fingerprint, index.fingerprint)
    hits = api.search_vectors(condition[None], index, k)[0]
    typer.echo(f"nearest sounds in {printable(index_path)}:")
    typer.echo("rank  score   id  path")
    for hit in hits:
        typer.echo(f"{hit.rank:>4}  {hit.score:6.3f}  {printable(hit.id)}  {printable(hit.path)}")


def _print_candidates(result: Any, written: list[Path], num_candidates: int) -> None:
    typer.echo(
        f"generated {num_candidates} candidate(s) of {result.duration_s:.2f} s at {result.sample_rate} Hz"
    )
    typer.echo("rank  candidate  score   file")
    for rank, index in enumerate(result.candidate_indices, start=1):
        score = "   n/a" if result.scores is None else f"{result.scores[rank - 1]:6.3f}"
        path = written[rank - 1] if rank <= len(written) else "-"
        typer.echo(f"{rank:>4}  {index:>9}  {score}  {printable(path)}")
