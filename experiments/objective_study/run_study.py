"""Objective study: eps vs v-prediction + zero-terminal SNR vs rectified flow on `data=shapes`, equal budget.

Trains the tiny default backbone once per objective (same steps, batch, model, optimizer, seed), then reports
composition accuracy (the CompositionEval callback, 64 held-out prompts) and the mean luminance of samples for
"black background" and "white background" prompts against the training images' -- the claim under test is
that eps on SDXL's schedule cannot reach very dark or very bright images, and zero-terminal SNR or flow can.
Every `--val-every` steps each run also reports the validation loss of illustrious.eval.validation_loss on 64
held-out images: val/x0_mse, the clean-latent error every objective converts to (one axis for eps, v and flow),
per time bin, and the objective's own val/loss.

    .venv/bin/python experiments/objective_study/run_study.py --steps 600 --out experiments/objective_study/results

Writes results.json, luminance.png, luminance_histogram.png, trajectory_luminance.png, samples.png into --out; each run's checkpoint,
logs and composition grid go to --runs/<objective> (outputs/objective_study by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from illustrious.config import CONF_DIR
from illustrious.data.sources.shapes import ShapesDataset
from illustrious.data.sources.shapes_datamodule import HELD_OUT_SEED_OFFSET
from illustrious.eval.composition import to_uint8
from illustrious.eval.trajectory import TrajectoryRecorder, luminance
from illustrious.sampling.grid import image_grid

OBJECTIVES = {  # objective -> extra overrides (none: each objective's defaults as shipped)
    "eps": [],
    "vpred": [],  # zero_terminal_snr=true is vpred's default
    "flow": [],
}
# sampling variants evaluated for luminance: name -> generate() overrides
VARIANTS = {"cfg4": {"guidance_scale": 4.0}, "cfg1": {"guidance_scale": 1.0},
            "cfg4_rescale0.7": {"guidance_scale": 4.0, "guidance_rescale": 0.7}}
BACKGROUNDS = ("black", "white")


def compose(overrides: list[str], output_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides, f"output_dir={output_dir}"])


def prompts_with_background(dataset: ShapesDataset, background: str, n: int) -> tuple[list[str], list[int]]:
    """The first n layouts of `dataset` on this background: their sentences and indices."""
    prompts, indices = [], []
    i = 0
    while len(prompts) < n:
        layout = dataset.layout(i)
        if layout.background == background:
            prompts.append(layout.sentence())
            indices.append(i)
        i += 1
    return prompts, indices


def image_luminance(dataset: ShapesDataset, indices: list[int]) -> np.ndarray:
    pixels = torch.stack([torch.from_numpy(dataset[i]["pixels"]) for i in indices])
    return luminance(pixels).numpy()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{torch.get_num_threads()} torch threads on {cpu} ({platform.system()}), torch {torch.__version__}"


def train_one(name: str, steps: int, runs: Path, seed: int, composition_samples: int,
              backbone: str, val_every: int, extra: list[str] = (), batch_size: int = 32,
              val_samples: int = 64) -> tuple[dict, object, dict]:
    from illustrious.train import train

    overrides = [f"objective={name}", *OBJECTIVES[name], f"trainer.max_steps={steps}", f"seed={seed}", "resume=false",
                 f"validation.every_n_steps={val_every}", "validation.batches=null", f"data.val_samples={val_samples}",
                 f"callbacks.composition.num_samples={composition_samples}",
                 f"backbone={backbone}", "data=shapes", f"data.batch_size={batch_size}", "callbacks.samples=null",
                 "callbacks.progress=null", "trainer.enable_progress_bar=false", *extra]
    cfg = compose(overrides, runs / name)
    wall, cpu = time.time(), cpu_seconds()
    metrics, objects = train(cfg)  # includes the composition evaluation at the end
    cost = {"wall_s": time.time() - wall, "cpu_s": cpu_seconds() - cpu, "overrides": overrides}
    metrics["validation_curve"] = logged_curves(runs / name / "tensorboard", prefix="val/")
    return metrics, objects["module"], cost


def logged_curves(logdir: Path, prefix: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar under `prefix` in the run's TensorBoard logs (the newest version)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # the curve is extra; the last validation's numbers are in the metrics anyway
        return {}
    versions = sorted(logdir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not versions:
        return {}
    events = EventAccumulator(str(versions[-1].parent))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if tag.startswith(prefix)}


@torch.no_grad()
def evaluate_luminance(module, prompts: dict, seed: int) -> dict:
    results = {}
    for variant, settings in VARIANTS.items():
        for background, texts in prompts.items():
            pixels = module.generate(texts, height=32, width=32, seed=seed, **settings)
            results[f"{variant}/{background}"] = luminance(pixels).tolist()
    return results


@torch.no_grad()
def record_trajectories(module, prompts: dict, seed: int) -> dict:
    """Luminance of the predicted x0 at every sampling step, one prompt per background (cfg 4, euler 20)."""
    curves = {}
    for background, texts in prompts.items():
        recorder = TrajectoryRecorder(module.backbone.decode)
        module.generate(texts[:4], height=32, width=32, seed=seed, callback=recorder)
        curves[background] = {"t": recorder.times,
                              "luminance": [luminance(p).tolist() for p in recorder.pixels()]}
    return curves


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["runs"])
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(4.2 * len(VARIANTS), 4), sharey=True)
    width = 0.38
    for ax, variant in zip(np.atleast_1d(axes), VARIANTS, strict=True):
        x = np.arange(len(names))
        for j, background in enumerate(BACKGROUNDS):
            values = [np.mean(results["runs"][n]["luminance"][f"{variant}/{background}"]) for n in names]
            errors = [np.std(results["runs"][n]["luminance"][f"{variant}/{background}"]) for n in names]
            face = "black" if background == "black" else "white"
            ax.bar(x + (j - 0.5) * width, values, width, yerr=errors, color=face, edgecolor="grey",
                   ecolor="tab:red", capsize=3, label=f"{background} background prompts")
            ax.axhline(results["reference"][background]["training_mean"], color="tab:blue", ls="--", lw=1)
        ax.set_xticks(x, names)
        ax.set_title(f"samples, {variant}")
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].set_ylabel("mean luminance (0 = black, 1 = white)")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper center")
    fig.suptitle("Mean luminance of samples; dashed: training images with that background", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "luminance.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(4.2 * len(VARIANTS), 3.6), sharey=True)
    bins = np.linspace(0, 1, 26)
    train = results["reference"]["black"]["training_luminance"] + results["reference"]["white"]["training_luminance"]
    for ax, variant in zip(np.atleast_1d(axes), VARIANTS, strict=True):
        ax.hist(train, bins=bins, density=True, color="lightgrey", label="training (black + white bg.)")
        for name in names:
            lum = results["runs"][name]["luminance"][f"{variant}/black"] + results["runs"][name]["luminance"][f"{variant}/white"]
            ax.hist(lum, bins=bins, density=True, histtype="step", lw=1.5, label=name)
        ax.set_title(f"per-image luminance, {variant}")
        ax.set_xlabel("mean luminance of a sample")
    np.atleast_1d(axes)[0].set_ylabel("density")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "luminance_histogram.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, background in zip(axes, BACKGROUNDS, strict=True):
        for name in names:
            curve = results["runs"][name]["trajectory"][background]
            ax.plot(np.mean(curve["luminance"], axis=1), marker=".", label=name)
        ax.axhline(results["reference"][background]["training_mean"], color="tab:blue", ls="--", lw=1)
        ax.set_title(f"{background} background prompts: predicted x0 per step")
        ax.set_xlabel("sampling step (euler, 20 steps, cfg 4)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("mean luminance of predicted x0")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "trajectory_luminance.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--backbone", default="sdxl_tiny", help="the tiny backbone every objective trains")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--runs", type=Path, default=Path("outputs/objective_study"),
                        help="training outputs (checkpoints, logs, composition grids)")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--prompts", type=int, default=16, help="prompts per background for the luminance check")
    parser.add_argument("--composition-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=100, help="validation loss every N steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=None, help="learning-rate warmup steps (default: as shipped, 50)")
    parser.add_argument("--val-samples", type=int, default=64, help="held-out images in the validation loss")
    parser.add_argument("--validation-only", action="store_true",
                        help="train and report the validation loss only (no composition, luminance or trajectories)")
    parser.add_argument("--report-only", action="store_true", help="no training: plots and tables from results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}

    held_out = ShapesDataset(length=100_000, width=32, height=32, seed=args.seed + HELD_OUT_SEED_OFFSET)
    training = ShapesDataset(length=100_000, width=32, height=32, seed=args.seed)
    prompts, reference = {}, {}
    for background in BACKGROUNDS:
        prompts[background], indices = prompts_with_background(held_out, background, args.prompts)
        _, train_indices = prompts_with_background(training, background, 512)
        own, train = image_luminance(held_out, indices), image_luminance(training, train_indices)
        reference[background] = {"training_mean": float(train.mean()), "training_std": float(train.std()),
                                 "prompts_own_images_mean": float(own.mean()), "training_luminance": train.tolist()}
    results.update(reference=reference, prompts=prompts)
    if not args.report_only:
        results.update(machine=machine(), steps=args.steps)

    grid_images, grid_captions = [], []
    for name in [] if args.report_only else args.objectives:
        print(f"== {name}: training {args.steps} steps", flush=True)
        metrics, module, cost = train_one(name, args.steps, args.runs, args.seed, args.composition_samples,
                                          args.backbone, args.val_every,
                                          (["callbacks.composition=null"] if args.validation_only else [])
                                          + ([f"optim.lr_scheduler.num_warmup_steps={args.warmup}"]
                                             if args.warmup is not None else []),
                                          args.batch_size, args.val_samples)
        if args.validation_only:
            results["runs"][name] = {"final_train_loss": metrics.get("train/loss"), "cost": cost,
                                     "validation": {k: v for k, v in metrics.items() if k.startswith("val/")},
                                     "validation_curve": metrics["validation_curve"]}
            results_path.write_text(json.dumps(results, indent=1))
            print(validation_table(results), flush=True)
            continue
        module.eval()
        wall, cpu = time.time(), cpu_seconds()
        lum = evaluate_luminance(module, prompts, args.seed)
        trajectory = record_trajectories(module, prompts, args.seed)
        cost.update(eval_wall_s=time.time() - wall, eval_cpu_s=cpu_seconds() - cpu)
        results["runs"][name] = {
            "composition_accuracy": metrics.get("eval/composition_accuracy"),
            "composition_chance": metrics.get("eval/composition_chance"),
            "final_train_loss": metrics.get("train/loss"),
            "validation": {k: v for k, v in metrics.items() if k.startswith("val/")},
            "validation_curve": metrics["validation_curve"],
            "luminance": lum, "trajectory": trajectory, "cost": cost,
        }
        for background in BACKGROUNDS:
            images = module.generate(prompts[background][:6], height=32, width=32, seed=args.seed)
            grid_images.extend(to_uint8(images))
            grid_captions.extend(f"{name}: {p}" for p in prompts[background][:6])
        results_path.write_text(json.dumps(results, indent=1))
        print(json.dumps({k: v for k, v in results["runs"][name].items() if k not in ("luminance", "trajectory")}),
              flush=True)

    names = [n for n in OBJECTIVES if n in results["runs"]]
    results["runs"] = {n: results["runs"][n] for n in names}
    results_path.write_text(json.dumps(results, indent=1))
    if args.validation_only:
        print(validation_table(results))
        return
    plot(results, args.out)
    if grid_images:
        image_grid(np.stack(grid_images), grid_captions, columns=12, cell=96).save(args.out / "samples.png")
    print(summary_table(results))
    print(validation_table(results))


def validation_table(results: dict) -> str:
    """val/x0_mse (the common axis), per time bin, and each objective's own val/loss, at the last validation."""
    runs = {n: r for n, r in results["runs"].items() if r.get("validation")}
    if not runs:
        return ""
    bins = sorted(int(k.rsplit("_", 1)[1]) for k in next(iter(runs.values()))["validation"] if "_bin_" in k)
    n = len(bins)
    lines = ["| objective | val/x0_mse | " + " | ".join(f"t={(k + 0.5) / n:.3g}" for k in bins)
             + " | val/loss (own target) | val/x0_mse by step |", "|---|---|" + "---|" * n + "---|---|"]
    for name, run in runs.items():
        val = run["validation"]
        curve = ", ".join(f"{s}: {v:.4f}" for s, v in run["validation_curve"].get("val/x0_mse", []))
        lines.append(f"| {name} | {val['val/x0_mse']:.4f} | "
                     + " | ".join(f"{val[f'val/x0_mse_bin_{k}']:.4f}" for k in bins)
                     + f" | {val['val/loss']:.4f} | {curve} |")
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    ref = results["reference"]
    lines = ["| objective | composition acc. (chance) | " + " | ".join(
        f"{v} black / white" for v in VARIANTS) + " | train wall / CPU (s) |",
             "|---|---|" + "---|" * len(VARIANTS) + "---|"]
    for name, run in results["runs"].items():
        cells = [f"{np.mean(run['luminance'][f'{v}/black']):.3f} / {np.mean(run['luminance'][f'{v}/white']):.3f}"
                 for v in VARIANTS]
        lines.append(f"| {name} | {run['composition_accuracy']:.3f} ({run['composition_chance']:.3f}) | "
                     + " | ".join(cells) + f" | {run['cost']['wall_s']:.0f} / {run['cost']['cpu_s']:.0f} |")
    lines.append(f"| training images | | {ref['black']['training_mean']:.3f} / {ref['white']['training_mean']:.3f} "
                 + "| " * (len(VARIANTS) - 1) + "|")
    lines += ["", "Share of samples darker than 0.2 / brighter than 0.8 (luminance range), all 2 x prompts samples:", "",
              "| objective | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for name, run in results["runs"].items():
        cells = []
        for v in VARIANTS:
            lum = np.array(run["luminance"][f"{v}/black"] + run["luminance"][f"{v}/white"])
            cells.append(f"{(lum < 0.2).mean():.2f} / {(lum > 0.8).mean():.2f} ({lum.min():.2f}-{lum.max():.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    train = np.array(ref["black"]["training_luminance"] + ref["white"]["training_luminance"])
    lines.append(f"| training images, black + white backgrounds | {(train < 0.2).mean():.2f} / {(train > 0.8).mean():.2f} "
                 f"({train.min():.2f}-{train.max():.2f}) |" + " |" * (len(VARIANTS) - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
