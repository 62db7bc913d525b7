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


def build_components(config_path: Path) -> dict:
    """Real-size UNet, VAE, vocoder and DDIM scheduler from the published configs, with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    ref = json.loads(config_path.read_text())
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


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def run_case(ldm, pipe, condition, null, duration_s: float, steps: int, repeats: int) -> dict:
    from qvimclap.generation import GenerationConfig, generate

    config = GenerationConfig(duration_s=duration_s, num_steps=steps, guidance_scale=2.5, seed=0)
    timings: dict[str, list[float]] = {"bare": [], "ours": [], "step": []}
    outputs: dict[str, np.ndarray] = {}

    def bare() -> None:
        pipe.scheduler = ldm.make_scheduler("ddim")
        start = time.perf_counter()
        outputs["bare"] = pipe(
            prompt_embeds=torch.from_numpy(condition)[None],
            negative_prompt_embeds=torch.from_numpy(null)[None],
            audio_length_in_s=duration_s,
            num_inference_steps=steps,
            guidance_scale=2.5,
            generator=torch.Generator().manual_seed(0),
        ).audios
        timings["bare"].append(time.perf_counter() - start)

    def ours() -> None:
        stamps: list[float] = []
        start = time.perf_counter()
        outputs["ours"] = generate(
            ldm,
            condition,
            config,
            unconditional=null,
            on_step=lambda i, n: stamps.append(time.perf_counter()),
        )
        timings["ours"].append(time.perf_counter() - start)
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import AudioLDMPipeline
    from diffusers.utils import logging as diffusers_logging

    from qvimclap.generation import AudioLdm, normalize_condition

    diffusers_logging.set_verbosity_error()
    start = time.perf_counter()
    parts = build_components(args.config)
    ldm = AudioLdm(
        parts["unet"], parts["vae"], parts["vocoder"], parts["scheduler_config"], source="random AudioLDM-S"
    )
    pipe = AudioLDMPipeline(vae=ldm.vae, text_encoder=stand_in_text_encoder(), tokenizer=None, unet=ldm.unet,
                            scheduler=ldm.make_scheduler("ddim"), vocoder=ldm.vocoder)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    condition = normalize_condition(rng.standard_normal(512).astype(np.float32))
    null = normalize_condition(rng.standard_normal(512).astype(np.float32))
    run_case(ldm, pipe, condition, null, 0.4, 2, 1)  # warm-up: allocator, kernels

    cases = [(5.0, 10), (10.0, 10)] + ([(5.0, 50), (10.0, 50)] if args.full else [])
    print(f"AudioLDM-S real size, random weights, fp32 CPU, {args.threads} threads, guidance 2.5 (batch 2), "
          f"1 candidate, DDIM; build {build_s:.1f} s; min of {args.repeats} interleaved runs\n")  # fmt: skip
    print("| audio | steps | diffusers pipeline | qvimclap | overhead | s per audio s | per step | "
          "50 steps (est.) | peak RSS | max abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for duration_s, steps in cases:  # each row is printed as soon as it is measured
        r = run_case(ldm, pipe, condition, null, duration_s, steps, args.repeats)
        est = "measured" if r["steps"] == 50 else f"{r['est50_s']:.1f} s"
        print(f"| {r['duration_s']:.0f} s | {r['steps']} | {r['bare_s']:.2f} s | {r['ours_s']:.2f} s | "
              f"{100 * r['overhead']:+.1f}% | {r['s_per_audio_s']:.2f} | {r['per_step_s']:.3f} s | {est} | "
              f"{r['peak_rss_gb']:.2f} GB | {r['max_abs_diff']:.1e} |", flush=True)  # fmt: skip
    print("\npeak RSS is the process's high-water mark up to that row; '50 steps (est.)' = measured total "
          "- steps x per-step + 50 x per-step (an extrapolation, not a measurement).")  # fmt: skip


if __name__ == "__main__":
    main()
