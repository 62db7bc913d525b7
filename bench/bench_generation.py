"""Generation cost on CPU with real-size AudioLDM-S components (random weights, reference configs).

Measures, in ONE run and interleaved (the machine is shared and noisy): the bare diffusers call
``AudioLDMPipeline(prompt_embeds=..., negative_prompt_embeds=...)`` against qvimclap's path
(:func:`qvimclap.generation.generate`) for the same condition and seed; seconds per generated second; the
process's peak RSS; and qvimclap's overhead over the bare call (target < 5%). Outputs are checked equal.

    .venv/bin/python bench/bench_generation.py            # quick: 5 s and 10 s at 10 steps
    .venv/bin/python bench/bench_generation.py --full     # also 50 steps (several minutes)

In quick mode the 50-step time is EXTRAPOLATED from the measured per-step time (fixed cost + 50 steps) and
marked so. Random weights cost the same as trained ones; the text encoder is left out (the condition is
given), a one-layer stand-in satisfies the pipeline's dtype lookup.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

REFERENCE = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "audioldm" / "audioldm-s-full-v2.json"
)


#: Tiny components (same structure) for timing the glue: with them, compute is small and the difference
#: between the two paths, which share every tensor operation, is what is left.
TINY = {
    "unet": {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": [8, 16],
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": 512,
        "class_embeddings_concat": True,
    },
    "vae": {
        "block_out_channels": [8, 16],
        "in_channels": 1,
        "out_channels": 1,
        "norm_num_groups": 8,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 4,
    },
    "vocoder": {
        "model_in_dim": 16,
        "sampling_rate": 16000,
        "upsample_initial_channel": 16,
        "upsample_rates": [5, 4, 8],
        "upsample_kernel_sizes": [10, 8, 16],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
        "normalize_before": False,
    },
}


def build_components(ref: dict) -> dict:
    """UNet, VAE, vocoder and DDIM scheduler config from component configs, with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    strip = lambda d: {k: v for k, v in d.items() if k != "class"}  # noqa: E731
    torch.manual_seed(0)
    return {
        "unet": UNet2DConditionModel(**strip(ref["unet"])).eval(),
        "vae": AutoencoderKL(**strip(ref["vae"])).eval(),
        "vocoder": SpeechT5HifiGan(SpeechT5HifiGanConfig(**strip(ref["vocoder"]))).eval(),
        "scheduler_config": strip(ref["scheduler"]),
    }


def stand_in_text_encoder():
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    config = ClapTextConfig(hidden_size=8, intermediate_size=8, num_attention_heads=1, num_hidden_layers=1,
                            vocab_size=16, projection_dim=512)  # fmt: skip
    return ClapTextModelWithProjection(config).eval()


def make_paths(parts: dict, source: str):
    """qvimclap's AudioLdm and the bare diffusers pipeline over the SAME component objects."""
    from diffusers import AudioLDMPipeline

    from qvimclap.generation import AudioLdm

    ldm = AudioLdm(parts["unet"], parts["vae"], parts["vocoder"], parts["scheduler_config"], source=source)
    pipe = AudioLDMPipeline(vae=ldm.vae, text_encoder=stand_in_text_encoder(), tokenizer=None, unet=ldm.unet,
                            scheduler=ldm.make_scheduler("ddim"), vocoder=ldm.vocoder)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return ldm, pipe


def glue_overhead_s(ref: dict, condition, null, repeats: int) -> float:
    """Median over paired (interleaved) calls of qvimclap's time minus the pipeline's; tiny components."""
    ldm, pipe = make_paths(build_components({**ref, **TINY}), "tiny")
    run_case(ldm, pipe, condition, null, 0.5, 10, 2)  # warm-up
    diffs = []
    for _ in range(repeats):
        r = run_case(ldm, pipe, condition, null, 0.5, 10, 1)
        diffs.append(r["ours_s"] - r["bare_s"])
    return float(np.median(diffs))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def run_case(ldm, pipe, condition, null, duration_s: float, steps: int, repeats: int) -> dict:
    from qvimclap.generation import GenerationConfig, generate

    config = GenerationConfig(duration_s=duration_s, num_steps=steps, guidance_scale=2.5, seed=0)
    timings: dict[str, list[float]] = {"bare": [], "ours": [], "step": [], "bare_cpu": [], "ours_cpu": []}
    outputs: dict[str, np.ndarray] = {}

    def bare() -> None:
        pipe.scheduler = ldm.make_scheduler("ddim")
        start, cpu = time.perf_counter(), time.process_time()
        outputs["bare"] = pipe(
            prompt_embeds=torch.from_numpy(condition)[None],
            negative_prompt_embeds=torch.from_numpy(null)[None],
            audio_length_in_s=duration_s,
            num_inference_steps=steps,
            guidance_scale=2.5,
            generator=torch.Generator().manual_seed(0),
        ).audios
        timings["bare"].append(time.perf_counter() - start)
        timings["bare_cpu"].append(time.process_time() - cpu)

    def ours() -> None:
        stamps: list[float] = []
        start, cpu = time.perf_counter(), time.process_time()
        outputs["ours"] = generate(
            ldm,
            condition,
            config,
            unconditional=null,
            on_step=lambda i, n: stamps.append(time.perf_counter()),
        )
        timings["ours"].append(time.perf_counter() - start)
        timings["ours_cpu"].append(time.process_time() - cpu)
        timings["step"].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))

    for repeat in range(repeats):  # alternate who goes first, so drift in machine load hits both alike
        for run in (bare, ours) if repeat % 2 == 0 else (ours, bare):
            run()
    out_pipe, out_ours = outputs["bare"], outputs["ours"]
    ours_t, pipe_t, step_times = timings["ours"], timings["bare"], timings["step"]
    n = min(out_pipe.shape[1], out_ours.shape[1])
    max_diff = float(np.abs(out_pipe[:, :n] - out_ours[:, :n]).max())
    ours, bare, per_step = min(ours_t), min(pipe_t), min(step_times)
    return {
        "duration_s": duration_s,
        "steps": steps,
        "bare_s": bare,
        "ours_s": ours,
        "overhead": ours / bare - 1.0,
        "overhead_cpu": min(timings["ours_cpu"]) / min(timings["bare_cpu"]) - 1.0,
        "s_per_audio_s": ours / duration_s,
        "per_step_s": per_step,
        "est50_s": ours - steps * per_step + 50 * per_step,
        "peak_rss_gb": peak_rss_gb(),
        "max_abs_diff": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also measure 50 steps (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved repeats per case; the minimum counts"
    )
    parser.add_argument("--config", type=Path, default=REFERENCE)
    parser.add_argument("--glue-only", action="store_true", help="only the glue measurement (seconds)")
    parser.add_argument(
        "--glue-repeats", type=int, default=30, help="paired tiny-model calls for the glue cost"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers.utils import logging as diffusers_logging

    from qvimclap.generation import normalize_condition

    diffusers_logging.set_verbosity_error()
    start = time.perf_counter()
    ref = json.loads(args.config.read_text())
    rng = np.random.default_rng(0)
    condition = normalize_condition(rng.standard_normal(512).astype(np.float32))
    null = normalize_condition(rng.standard_normal(512).astype(np.float32))
    if args.glue_only:
        glue = glue_overhead_s(ref, condition, null, args.glue_repeats)
        print(f"glue overhead: {1000 * glue:+.2f} ms per call (median of {args.glue_repeats} paired calls)")
        return
    ldm, pipe = make_paths(build_components(ref), "random AudioLDM-S")
    build_s = time.perf_counter() - start
    run_case(ldm, pipe, condition, null, 0.4, 2, 1)  # warm-up: allocator, kernels

    cases = [(5.0, 10), (10.0, 10)] + ([(5.0, 50), (10.0, 50)] if args.full else [])
    print(f"AudioLDM-S real size, random weights, fp32 CPU, {args.threads} threads, guidance 2.5 (batch 2), "
          f"1 candidate, DDIM; build {build_s:.1f} s; min of {args.repeats} interleaved runs\n")  # fmt: skip
    print("| audio | steps | diffusers pipeline | qvimclap | overhead (wall) | overhead (CPU time) | "
          "s per audio s | per step | 50 steps (est.) | peak RSS | max abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for duration_s, steps in cases:  # each row is printed as soon as it is measured
        r = run_case(ldm, pipe, condition, null, duration_s, steps, args.repeats)
        rows.append(r)
        est = "measured" if r["steps"] == 50 else f"{r['est50_s']:.1f} s"
        print(f"| {r['duration_s']:.0f} s | {r['steps']} | {r['bare_s']:.2f} s | {r['ours_s']:.2f} s | "
              f"{100 * r['overhead']:+.1f}% | {100 * r['overhead_cpu']:+.1f}% | {r['s_per_audio_s']:.2f} | "
              f"{r['per_step_s']:.3f} s | {est} | "
              f"{r['peak_rss_gb']:.2f} GB | {r['max_abs_diff']:.1e} |", flush=True)  # fmt: skip
    print("\nTimes are wall clock, min of the repeats. CPU-time overhead compares process CPU seconds, "
          "which other processes on a shared machine disturb far less than wall time. Peak RSS is the "
          "process's high-water mark up to that row; '50 steps (est.)' = measured total - steps x per-step "
          "+ 50 x per-step (an extrapolation, not a measurement).")  # fmt: skip
    glue = glue_overhead_s(ref, condition, null, args.glue_repeats)
    shares = ", ".join(
        f"{100 * glue / r['bare_s']:+.3f}% of the {r['duration_s']:.0f} s / {r['steps']}-step call"
        for r in rows
    )
    print(f"\nGlue overhead (qvimclap minus diffusers, same components; median of {args.glue_repeats} paired "
          f"tiny-model calls): {1000 * glue:+.2f} ms per call = {shares} above.")  # fmt: skip


if __name__ == "__main__":
    main()
