"""A real SLURM cluster (started by .ci/slurm_up.sh): a Hydra multirun through `hydra/launcher=slurm` whose
jobs all finish and are gathered into one table, and a 2-task DDP training job through `srun`.

Skipped, with the reason, where no cluster answers (`sinfo` missing or no node up).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST, REPO


def cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return "no SLURM client (sinfo/srun); .ci/slurm_up.sh installs and starts a one-node cluster"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout.split()
    except (subprocess.SubprocessError, OSError) as e:
        return f"sinfo failed: {e}"
    if not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return f"no SLURM node is up (sinfo states: {states or 'none'}); run .ci/slurm_up.sh"
    return None


PROBLEM = cluster_problem()
if PROBLEM and os.environ.get("ILLUSTRIOUS_REQUIRE_SLURM") == "1":  # set by .ci/run, which starts the cluster
    raise RuntimeError(f"SLURM cluster required but not usable: {PROBLEM}")
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))]

# Jobs run where this checkout is, with this interpreter; no progress bars in SLURM logs.
TINY = [*FAST, "callbacks.progress=null", "callbacks.checkpoint=null"]


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}


def test_sweep_of_three_jobs_finishes_and_is_gathered(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "illustrious.run", "-m", "hydra/launcher=slurm", "objective=eps,vpred,flow",
           *TINY, "trainer=cpu", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10",
           "hydra.launcher.cpus_per_task=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for job in range(3):  # each job ran under SLURM and finished
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["global_step"] == 2
    # one sbatch job array of three tasks, each with its own SLURM log; USR2 before the limit lets submitit requeue
    (submission,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-2" in submission.read_text() and "#SBATCH --signal=USR2@120" in submission.read_text()
    assert len(list((sweep / ".submitit").glob("*_*/*_0_log.out"))) == 3

    gathered = subprocess.run([sys.executable, "-m", "illustrious.gather", str(sweep)], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=120)
    assert gathered.returncode == 0, gathered.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(r["objective"] for r in rows) == ["eps", "flow", "vpred"]
    assert all(r["status"] == "done" and float(r["train/loss"]) > 0 for r in rows)
    assert gathered.stdout.startswith("| job | objective | status |")


def test_two_task_ddp_job_through_srun(tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = ["srun", "--job-name=illustrious-ddp", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10",
           sys.executable, "-m", "illustrious.run", *TINY, "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "data.batch_size=2", "callbacks.samples=null", "callbacks.composition=null",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # Lightning took both ranks from SLURM (no processes of its own) and formed one group of two
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in out and "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert not (run_dir / "train_ddp_process_1.log").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 2
