"""Kill-and-resume on the command line, as a scheduler does it: a run stopped with SIGTERM (it saves and exits
143), resumed, killed with SIGKILL (nothing saved), resumed again, must log the same per-step losses as a run
that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from illustrious.callbacks.step_log import read_steps
from illustrious.checkpoint_folder import CheckpointFolder
from illustrious.checkpoint_io import load_checkpoint_file
from tests.conftest import FAST
from tests.unit.test_data_folder import SMALL_OVERRIDES, make_image_folder

STEPS = 14  # not a multiple of the checkpoint interval: the final step must be saved all the same
COMMON = [o for o in FAST if not o.startswith(("trainer.max_steps", "data.length"))] + [
    f"trainer.max_steps={STEPS}", "callbacks.checkpoint.every_n_train_steps=4", "callbacks.samples=null",
    "callbacks.composition=null", "callbacks.progress=null", "backbone=lumina_tiny"]
SOURCES = {
    "shapes": ["data.length=40"],  # 10 batches an epoch: the run crosses an epoch boundary
    "folder": ["data=folder", *SMALL_OVERRIDES],
    # two loader workers, each streaming its own shards; 5 batches an epoch: the run crosses epoch boundaries
    "webdataset": ["data=webdataset", *[o for o in SMALL_OVERRIDES if not o.startswith("data.num_workers")],
                   "data.num_workers=2", "data.batches_per_epoch=5", "data.shuffle_buffer=4"],
}


def start(args: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "-m", "illustrious.run", *args, f"hydra.run.dir={out}"], cwd=out.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_steps(out: Path) -> int:
    path = out / "steps.jsonl"
    return max(read_steps(path) if path.exists() else {}, default=0)


def stop_after(proc: subprocess.Popen, out: Path, step: int, signum: int, timeout: float = 600) -> str:
    """Send `signum` once the run has logged `step`; returns the run's output."""
    deadline = time.monotonic() + timeout
    while logged_steps(out) < step:
        assert proc.poll() is None, f"the run ended before step {step}:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=timeout)
    return output


def finish(args: list[str], out: Path) -> str:
    proc = start(args, out)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize("source", list(SOURCES))
def test_killed_and_resumed_runs_match_an_uninterrupted_one(tmp_path, source):
    args = [*COMMON, *SOURCES[source]]
    if source == "folder":
        make_image_folder(tmp_path / "data", n_good=12)
        args.append(f"data.root={tmp_path / 'data'}")
    if source == "webdataset":
        from tests.unit.test_data_webdataset import shards

        shards(tmp_path, shard_size=3)
        args.append(f"data.urls={tmp_path / 'shards'}")
    straight = tmp_path / "straight"
    finish(args, straight)
    reference = read_steps(straight / "steps.jsonl")
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert [s for s, _ in CheckpointFolder(straight / "checkpoints").snapshots()] == [12, 14]  # keep_last=2, final

    run = tmp_path / "interrupted"
    proc = start(args, run)
    output = stop_after(proc, run, 3, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM and output.count("Interrupted by SIGTERM") == 1, output[-3000:]
    saved = load_checkpoint_file(run / "checkpoints" / "last.safetensors")["global_step"]
    assert saved == logged_steps(run) >= 3  # saved at the step it stopped on, off the 4-step interval

    proc = start(args, run)
    stop_after(proc, run, saved + 5, signal.SIGKILL)  # nothing saved since the last periodic checkpoint
    assert proc.returncode == -signal.SIGKILL
    finish(args, run)

    resumed = read_steps(run / "steps.jsonl")
    assert sorted(resumed) == sorted(reference)
    for step, record in reference.items():
        assert (resumed[step]["epoch"], resumed[step]["batch"]) == (record["epoch"], record["batch"]), step
        assert abs(resumed[step]["loss"] - record["loss"]) <= 1e-6, (step, resumed[step], record)
