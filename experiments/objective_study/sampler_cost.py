"""Sampler overhead per step: ours against diffusers' scheduler loops, and a real tiny model's cost per step.

Measured, not asserted (BENCHMARKS.md). Medians of --repeats runs; compare within one run, as ratios.

    .venv/bin/python experiments/objective_study/sampler_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

from illustrious.objectives import VPredictionObjective
from illustrious.sampling.samplers import sample_dpmpp_2m, sample_euler

SDXL = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
            prediction_type="v_prediction", rescale_betas_zero_snr=True)


def median_ms_per_step(fn, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 16, 32, 32])
    parser.add_argument("--model", action="store_true", help="also time lumina_tiny generate() per step")
    args = parser.parse_args()

    obj = VPredictionObjective(zero_terminal_snr=True)
    x = torch.randn(*args.shape)
    zero_model = torch.zeros_like  # a free model: what is left is the sampler's own cost
    denoise = lambda x_t, t: obj.to_x0(x_t, zero_model(x_t), t.reshape(1).expand(x_t.shape[0]))  # noqa: E731

    def ours(sampler):
        return lambda: sampler(denoise, x.clone(), obj.sampling_times(args.steps), obj.alpha_sigma)

    def diffusers_loop(cls, **kw):
        scheduler = cls(**SDXL, **kw)

        def run():
            scheduler.set_timesteps(args.steps)
            sample = x.clone()
            for k in scheduler.timesteps:
                sample = scheduler.step(zero_model(scheduler.scale_model_input(sample, k)), k, sample).prev_sample
        return run

    rows = {
        "ours euler": median_ms_per_step(ours(sample_euler), args.steps, args.repeats),
        "diffusers EulerDiscreteScheduler": median_ms_per_step(diffusers_loop(EulerDiscreteScheduler), args.steps, args.repeats),
        "ours dpmpp_2m": median_ms_per_step(ours(sample_dpmpp_2m), args.steps, args.repeats),
        "diffusers DPMSolverMultistepScheduler": median_ms_per_step(
            diffusers_loop(DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2), args.steps, args.repeats),
    }
    if args.model:
        from hydra import compose, initialize_config_dir

        from illustrious.config import CONF_DIR, instantiate
        from illustrious.sampling.generate import generate

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["backbone=lumina_tiny", "objective=flow", "output_dir=/tmp/unused"])
        backbone, flow = instantiate(cfg.backbone), instantiate(cfg.objective)
        prompts = ["A red circle on the left, on a black background."] * args.shape[0]
        for sampler in ("euler", "dpmpp_2m"):
            rows[f"lumina_tiny generate, {sampler}, cfg 4, {args.shape[0]} images 32x32"] = median_ms_per_step(
                lambda s=sampler: generate(backbone, flow, prompts, height=32, width=32, steps=args.steps, sampler=s),
                args.steps, max(1, args.repeats // 3))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, latents {tuple(args.shape)}, "
          f"{args.steps} steps, median of {args.repeats}")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.3f} ms/step |")


if __name__ == "__main__":
    main()
