"""How the default run's four figures grow with its training budget (issue 7, item 1).

Runs the default recipe (`python -m illustrious.run`: lumina_tiny, flow, shapes 32x32, batch 32, lr 2e-3, warmup
50 + cosine over the run) at several step counts, each as its own run (the cosine schedule stretches with it),
and reads back each run's `composition.json`. For every run it also reads the judged samples
(`composition_samples.npz`) and reports the median background level each prompted background came out at:
the judge assigns every pixel its nearest palette colour, so a white background rendered at level 180 counts
as grey.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/training_budget/budget_curve.py --steps 600 1200 2400 \
        --seeds 0 --out /tmp/budget
Results: <out>/<steps>_s<seed>/ (each run's folder), <out>/budget_curve.json and a table on stdout.
Numbers and the write-up: README.md beside this.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from illustrious.callbacks.composition import METRICS
from illustrious.data.sources.shapes import BACKGROUNDS, Layout
from illustrious.eval.composition import background_mask, colour_map


def background_levels(samples: Path) -> dict[str, float]:
    """Per prompted background: the median over samples of each sample's median background level (0-255,
    channel mean), over the pixels the judge counts as background."""
    data = np.load(samples, allow_pickle=False)
    levels: dict[str, list[float]] = {name: [] for name in BACKGROUNDS}
    for image, layout_json in zip(data["images"], data["layouts"], strict=True):
        layout = Layout.from_dict(json.loads(str(layout_json)))
        mask = background_mask(colour_map(image))
        if mask.any():
            levels[layout.background].append(float(np.median(image[mask].mean(-1))))
    return {name: float(np.median(v)) for name, v in levels.items() if v}


def run(steps: int, seed: int, out: Path) -> dict:
    folder = out / f"{steps}_s{seed}"
    command = [sys.executable, "-m", "illustrious.run", f"hydra.run.dir={folder}", f"trainer.max_steps={steps}",
               f"seed={seed}", "callbacks.samples=null", "callbacks.checkpoint=null"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    judged = json.loads((folder / "composition.json").read_text())
    return {"steps": steps, "seed": seed, "seconds": round(seconds, 1),
            **{name: judged[key] for name, key in METRICS.items()},
            "background_levels": background_levels(folder / "composition_samples.npz")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[600, 1200, 2400])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/budget_curve"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(steps, seed, args.out) for steps in args.steps for seed in args.seeds]
    (args.out / "budget_curve.json").write_text(json.dumps(rows, indent=2))
    print("steps seed | composition shape background cleanliness | background levels (black/grey/white) | s")
    for r in rows:
        bg = r["background_levels"]
        print(f"{r['steps']:5d} {r['seed']:4d} | {r['composition']:.3f} {r['shape']:.3f} {r['background']:.3f} "
              f"{r['cleanliness']:.1f} | {bg.get('black', float('nan')):.0f} / {bg.get('grey', float('nan')):.0f}"
              f" / {bg.get('white', float('nan')):.0f} | {r['seconds']:.0f}")


if __name__ == "__main__":
    main()
