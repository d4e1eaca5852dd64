"""DDP on the CPU against one process with the same global batch: seconds per training step.

    python benchmarks/ddp_step_time.py [--backbone sdxl_tiny] [--global-batch 16] [--steps 30] [--processes 2]

Both runs go through the real CLI (`trainer=cpu` vs `trainer=ddp trainer.accelerator=cpu`); the step time is
read from the wall-clock stamps TensorBoard stores with each step's logged loss, after a few warm-up steps,
so start-up (imports, process group, model build) is not counted. Each DDP process gets
OMP_NUM_THREADS = cores / processes, the single process all cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3


def step_seconds(run_dir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in run_dir.glob("tensorboard/**/events.out.tfevents.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    stamps = [e.wall_time for e in sorted(acc.Scalars("train/loss"), key=lambda e: e.step)][WARMUP:]
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def run(args, run_dir: Path, processes: int) -> float:
    cores = os.cpu_count() or 1
    per_process = args.global_batch // processes
    trainer = (["trainer=cpu"] if processes == 1 else
               ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={processes}"])
    cmd = [sys.executable, "-m", "illustrious.run", f"backbone={args.backbone}", *trainer,
           f"data.batch_size={per_process}", f"trainer.max_steps={args.steps}", "trainer.log_every_n_steps=1",
           "trainer.enable_progress_bar=false", "callbacks.samples=null", "callbacks.composition=null",
           "callbacks.checkpoint=null", "callbacks.throughput=null", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return step_seconds(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sdxl_tiny")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = run(args, Path(tmp) / "single", 1)
        ddp = run(args, Path(tmp) / "ddp", args.processes)
    print(f"{args.backbone}, global batch {args.global_batch}, {os.cpu_count()} cores")
    print("| run | s/step | samples/s |\n|---|---|---|")
    print(f"| 1 process, batch {args.global_batch} | {single:.3f} | {args.global_batch / single:.1f} |")
    print(f"| DDP {args.processes} processes x batch {args.global_batch // args.processes} (gloo) | {ddp:.3f} | "
          f"{args.global_batch / ddp:.1f} |")


if __name__ == "__main__":
    main()
