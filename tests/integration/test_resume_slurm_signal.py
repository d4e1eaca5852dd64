"""SLURM's requeue signal on the command line, as `scripts/sbatch_train.sh` delivers it (`--signal=USR2@90`): the
run saves our verified checkpoint at the end of the step, global rank 0 requeues the job with `scontrol requeue`,
the process exits 140 (128 + SIGUSR2), Lightning writes no `hpc_ckpt_*.ckpt` of its own, and the requeued job
(same command, same run folder) continues at the exact step with the losses of an uninterrupted run.

SLURM itself is simulated: its environment variables, and an `scontrol` on PATH that records its arguments (the
real one-node cluster runs in tests/integration/test_slurm.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from illustrious.callbacks.step_log import read_steps
from illustrious.checkpoint_io import load_checkpoint_file
from tests.conftest import FAST, REPO
from tests.integration.test_resume import logged_steps

STEPS = 7
ARGS = [o for o in FAST if not o.startswith(("trainer.max_steps", "data.length"))] + [
    f"trainer.max_steps={STEPS}", "data.length=16", "callbacks.checkpoint.every_n_train_steps=100",
    "callbacks.samples=null", "callbacks.composition=null", "callbacks.progress=null", "backbone=lumina_tiny"]
JOB = "4242"


def slurm_env(tmp_path, restart: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SLURM_JOB_ID": JOB, "SLURM_JOB_NAME": "illustrious", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODELIST": "localhost", "SLURM_RESTART_COUNT": str(restart)}


def start(out, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "illustrious.run", *ARGS, f"hydra.run.dir={out}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_usr2_saves_requeues_and_the_requeued_job_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    (tmp_path / "straight_job").mkdir()
    proc = start(straight, slurm_env(tmp_path / "straight_job", 0))
    output, _ = proc.communicate(timeout=2400)
    assert proc.returncode == 0, output[-3000:]
    reference = read_steps(straight / "steps.jsonl")
    assert sorted(reference) == list(range(1, STEPS + 1))

    run = tmp_path / "job"
    proc = start(run, slurm_env(tmp_path, 0))
    while logged_steps(run) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR2)
    output, _ = proc.communicate(timeout=2400)
    assert proc.returncode == 128 + signal.SIGUSR2, output[-3000:]
    assert "Interrupted by SIGUSR2" in output and "requeued with SLURM" in output, output[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB]
    saved = load_checkpoint_file(run / "checkpoints" / "last.safetensors")["global_step"]
    assert 2 <= saved == logged_steps(run) < STEPS  # saved at the step it stopped on
    assert not list(run.rglob("hpc_ckpt*")), "Lightning's own SLURM checkpoint was written"

    proc = start(run, slurm_env(tmp_path, 1))  # the requeued job: same command, same folder
    output, _ = proc.communicate(timeout=2400)
    assert proc.returncode == 0, output[-3000:]
    resumed = read_steps(run / "steps.jsonl")
    assert sorted(resumed) == sorted(reference)
    for step, record in reference.items():
        assert (resumed[step]["epoch"], resumed[step]["batch"]) == (record["epoch"], record["batch"]), step
        assert abs(resumed[step]["loss"] - record["loss"]) <= 1e-6, (step, resumed[step], record)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB]  # no requeue at a normal end


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (the SigCgt mask in /proc/<pid>/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the signal mask from /proc")
def test_usr2_before_the_config_is_composed_is_kept_and_acted_on_after_the_first_step(tmp_path):
    """SLURM may signal a task while Python is still importing (a requeue right after a start): the command line
    records stop signals before it imports Hydra, and the run saves, requeues and exits 140 after its first step."""
    run = tmp_path / "job"
    proc = start(run, slurm_env(tmp_path, 0))
    deadline = time.monotonic() + 120
    while not catches(proc.pid, signal.SIGUSR2):  # the first moment a USR2 would not kill the process
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.001)
    proc.send_signal(signal.SIGUSR2)
    output, _ = proc.communicate(timeout=2400)
    assert proc.returncode == 128 + signal.SIGUSR2, output[-3000:]
    # received before Hydra configured logging: Python's own last-resort handler printed it, unformatted
    assert any(line.startswith("Received SIGUSR2: saving a checkpoint") for line in output.splitlines()), output[-3000:]
    assert "Interrupted by SIGUSR2" in output and "requeued with SLURM" in output, output[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB]
    assert load_checkpoint_file(run / "checkpoints" / "last.safetensors")["global_step"] == 1
