"""A real SLURM cluster (started by .ci/slurm_up.sh): a Hydra multirun through `hydra/launcher=slurm` whose
jobs all finish and are gathered into one table, a 2-task DDP training job through `srun`, and a training job
submitted with `scripts/sbatch_train.sh` that SLURM's requeue signal interrupts, which requeues itself and, requeued,
resumes in the same run folder with the losses of an uninterrupted run.

Skipped, with the reason, where no cluster answers (`sinfo` missing or no node up).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from illustrious.callbacks.step_log import read_steps
from illustrious.checkpoint_io import load_checkpoint_file
from tests.conftest import FAST, REPO
from tests.integration.test_resume import logged_steps


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


# The requeue job: lumina_tiny as in test_resume_slurm_signal.py, with steps enough that the job is still training
# when the second signal (sent 2 steps into its second start) arrives on a loaded machine.
REQUEUE_STEPS = 24
REQUEUE_ARGS = [o for o in FAST if not o.startswith(("trainer.max_steps", "data.length"))] + [
    f"trainer.max_steps={REQUEUE_STEPS}", "data.length=16", "callbacks.checkpoint.every_n_train_steps=100",
    "callbacks.samples=null", "callbacks.composition=null", "callbacks.progress=null", "backbone=lumina_tiny"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def job_record(job: str) -> dict[str, str]:
    """`scontrol show job`'s Key=Value fields (SLURM keeps a finished job's record for MinJobAge, 300 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(condition, job: str, log, what: str, timeout: float = 900) -> None:
    """Poll `condition()` every 50 ms (and the job's state every 2 s) until it holds; fail if the job ended first."""
    deadline, polls = time.monotonic() + timeout, 0
    while not condition():
        if polls % 40 == 0:
            state = job_record(job).get("JobState")
            assert state not in ENDED, f"job {job} {state} before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"job {job}: no {what} after {timeout} s:\n{log.read_text()[-3000:]}"
        polls += 1
        time.sleep(0.05)


def saved_steps(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"Saved checkpoint at step (\d+)", text)]


def test_requeue_signals_on_an_sbatch_job_requeue_it_and_it_resumes_exactly(tmp_path):
    """USR2 twice, as SLURM sends it (to the job's tasks, not the batch shell): first while the model is still being
    built, then mid-training. Each time the run saves at the end of the step, requeues its own job and SLURM starts
    it again in the same run folder; the per-step losses equal an uninterrupted run's."""
    straight = tmp_path / "straight"  # the uninterrupted reference runs outside SLURM meanwhile
    reference_proc = subprocess.Popen([sys.executable, "-m", "illustrious.run", *REQUEUE_ARGS,
                                       f"hydra.run.dir={straight}"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "job"
    log = tmp_path / "slurm.out"
    # scripts/sbatch_train.sh as a user submits it (--requeue, --signal=USR2@90, --open-mode=append), sized to this
    # CPU node; its 24 h limit is far away, so the signals come from scancel, which sends them where SLURM does
    submit = subprocess.run(["sbatch", "--parsable", "--job-name=illustrious-requeue", "--gpus-per-node=0",
                             "--cpus-per-task=1", f"--output={log}", str(REPO / "scripts" / "sbatch_train.sh"),
                             *REQUEUE_ARGS], cwd=REPO, env={**env(), "RUN_DIR": str(run), "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    try:
        # 1. train() has started (Lightning's seed line) but no step has run: the model is being built
        wait_for(lambda: "Seed set to" in text(), job, log, "the first start's seed line")
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
        # 2. two steps into the second start
        wait_for(lambda: f"job {job} (restart 1)" in text() and saved_steps(text()), job, log, "the second start")
        resumed_at = saved_steps(text())[0]
        wait_for(lambda: logged_steps(run) >= resumed_at + 2, job, log, "two steps of the second start")
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
        # 3. the third start trains to the end (a requeued job waits AuthInfo=cred_expire seconds to start again)
        deadline = time.monotonic() + 900
        while (record := job_record(job)).get("JobState") not in ENDED:
            assert time.monotonic() < deadline, f"job {job} still {record.get('JobState')}:\n{text()[-3000:]}"
            time.sleep(1)
    finally:  # nothing left running when the test fails
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
        if sys.exc_info()[0] is not None:
            reference_proc.kill()
    output = text()
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "2"), output[-4000:]

    starts = output.split(f"job {job} (restart ")[1:]
    assert [s[:2] for s in starts] == ["0)", "1)", "2)"], output[-4000:]
    checkpoints = run / "checkpoints"
    for start in starts[:2]:  # each interrupted start wrote one checkpoint, at the step it acted on the signal
        assert "Received SIGUSR2" in start and f"Requeued SLURM job {job}." in start, start[-3000:]
        assert len(saved_steps(start)) == 1, start[-3000:]
    # the first signal came before training began: it was kept, and acted on at the end of the first step
    assert starts[0].index("Received SIGUSR2") < starts[0].index("Memory check"), starts[0][-3000:]
    assert saved_steps(starts[0]) == [1], starts[0][-3000:]
    assert f"Resuming from {checkpoints}" in starts[1] and 2 < saved_steps(starts[1])[0] < REQUEUE_STEPS, starts[1][-3000:]
    assert f"Resuming from {checkpoints}" in starts[2] and saved_steps(starts[2]) == [REQUEUE_STEPS], starts[2][-3000:]
    assert load_checkpoint_file(checkpoints / "last.safetensors")["global_step"] == REQUEUE_STEPS
    assert not list(run.rglob("hpc_ckpt*")), "Lightning's own SLURM checkpoint was written"

    reference_out, _ = reference_proc.communicate(timeout=900)
    assert reference_proc.returncode == 0, reference_out[-3000:]
    reference, resumed = read_steps(straight / "steps.jsonl"), read_steps(run / "steps.jsonl")
    assert sorted(reference) == sorted(resumed) == list(range(1, REQUEUE_STEPS + 1))
    for step, expected in reference.items():
        assert (resumed[step]["epoch"], resumed[step]["batch"]) == (expected["epoch"], expected["batch"]), step
        assert abs(resumed[step]["loss"] - expected["loss"]) <= 1e-6, (step, resumed[step], expected)


def submit_training(tmp_path, name: str, args: list[str], *sbatch_options: str) -> tuple[str, object, object]:
    """`sbatch scripts/sbatch_train.sh args` as a user submits it; (job id, run folder, SLURM log)."""
    run, log = tmp_path / name, tmp_path / f"{name}.out"
    submit = subprocess.run(["sbatch", "--parsable", f"--job-name=illustrious-{name}", "--gpus-per-node=0",
                             *sbatch_options, f"--output={log}", str(REPO / "scripts" / "sbatch_train.sh"), *args],
                            cwd=REPO, env={**env(), "RUN_DIR": str(run), "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stderr
    return submit.stdout.strip().split(";")[0], run, log


def wait_until_ended(job: str, log, timeout: float = 900) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (record := job_record(job)).get("JobState") not in ENDED:
        assert time.monotonic() < deadline, f"job {job} still {record.get('JobState')}:\n{log.read_text()[-3000:]}"
        time.sleep(1)
    return record


def task_pid(job: str, rank: int) -> int | None:
    """The pid of global rank `rank`'s training process of `job` on this node (read from /proc)."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            environ = open(f"/proc/{proc}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{proc}/cmdline", "rb").read()
        except OSError:
            continue
        if (b"illustrious.run" in cmdline and f"SLURM_JOB_ID={job}".encode() in environ
                and f"SLURM_PROCID={rank}".encode() in environ):
            return int(proc)
    return None


def assert_same_losses(reference_dir, run_dir, steps: int) -> None:
    reference, resumed = read_steps(reference_dir / "steps.jsonl"), read_steps(run_dir / "steps.jsonl")
    assert sorted(reference) == sorted(resumed) == list(range(1, steps + 1))
    for step, expected in reference.items():
        assert (resumed[step]["epoch"], resumed[step]["batch"]) == (expected["epoch"], expected["batch"]), step
        assert abs(resumed[step]["loss"] - expected["loss"]) <= 1e-6, (step, resumed[step], expected)


DDP_ARGS = [*REQUEUE_ARGS, "trainer=ddp", "trainer.accelerator=cpu"]


def test_requeue_signal_on_one_rank_of_a_two_task_ddp_job_requeues_it_and_it_resumes_exactly(tmp_path):
    """SLURM signals every task, but not at the same instant. Here only rank 1 gets USR2: at the step boundary
    the ranks agree on it, both take part in the save, rank 0 requeues the job (the requeue signal outranks the
    SIGTERM it would otherwise assume), and the requeued 2-task job resumes with an uninterrupted run's losses."""
    straight = tmp_path / "straight"  # the same 2-process DDP run outside SLURM, meanwhile
    reference_proc = subprocess.Popen([sys.executable, "-m", "illustrious.run", *DDP_ARGS, "trainer.devices=2",
                                       f"hydra.run.dir={straight}"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    job, run, log = submit_training(tmp_path, "ddp-requeue", DDP_ARGS, "--ntasks-per-node=2", "--cpus-per-task=1")
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    try:
        wait_for(lambda: logged_steps(run) >= 2, job, log, "two steps")
        pid = task_pid(job, 1)
        assert pid is not None, f"no rank-1 process of job {job}"
        os.kill(pid, signal.SIGUSR2)
        record = wait_until_ended(job, log)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
        if sys.exc_info()[0] is not None:
            reference_proc.kill()
    output = text()
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), output[-4000:]
    first, second = output.split(f"job {job} (restart ")[1:]
    assert first.count("Received SIGUSR2") == 1 and f"Requeued SLURM job {job}." in first, first[-3000:]
    # each rank logs the one save it took part in, at the same step
    assert len(set(saved_steps(first))) == 1 and 2 <= saved_steps(first)[0] < REQUEUE_STEPS, first[-3000:]
    assert "requeued with SLURM (exit status 140)" in first, first[-3000:]
    assert f"Resuming from {run / 'checkpoints'}" in second and set(saved_steps(second)) == {REQUEUE_STEPS}, second[-3000:]
    reference_out, _ = reference_proc.communicate(timeout=900)
    assert reference_proc.returncode == 0, reference_out[-3000:]
    assert_same_losses(straight, run, REQUEUE_STEPS)


# Preemption has the scheduler in the loop (the urgent job is submitted, scheduled, and preempts): 2-3 s on the CI
# node, as long as 24 of these steps take, so this run is ten times longer and the preemption lands mid-run; it saves
# only when stopped and at the end (every_n_train_steps=0), so each start logs one save.
PREEMPT_STEPS = 10 * REQUEUE_STEPS
PREEMPT_ARGS = [o for o in REQUEUE_ARGS if not o.startswith(("trainer.max_steps", "callbacks.checkpoint.every_n"))] + [
    f"trainer.max_steps={PREEMPT_STEPS}", "callbacks.checkpoint.every_n_train_steps=0"]


def test_a_job_preempted_by_an_urgent_one_saves_requeues_and_resumes_exactly(tmp_path):
    """Preemption as SLURM does it (.ci/slurm_up.sh: PreemptType=preempt/partition_prio, PreemptMode=REQUEUE,
    GraceTime=120 on debug): a job in the higher-tier partition `urgent` needs the node, the training job gets
    SIGTERM, saves, sees its PreemptTime and requeues itself (SLURM does not requeue a preempted job that
    exits within its grace time), the urgent job runs, and the training job starts again and resumes with an uninterrupted run's losses."""
    straight = tmp_path / "straight"
    reference_proc = subprocess.Popen([sys.executable, "-m", "illustrious.run", *PREEMPT_ARGS,
                                       f"hydra.run.dir={straight}"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    # the whole node (as SLURM counts its CPUs), so the urgent job must preempt it
    cpus = int(subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%c"], capture_output=True, text=True,
                              timeout=60).stdout.split()[0].rstrip("+"))
    job, run, log = submit_training(tmp_path, "preempted", PREEMPT_ARGS, f"--cpus-per-task={cpus}")
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    urgent = None
    try:
        wait_for(lambda: logged_steps(run) >= 2, job, log, "two steps")
        urgent_submit = subprocess.run(["sbatch", "--parsable", "--partition=urgent", f"--cpus-per-task={cpus}",
                                        f"--output={tmp_path / 'urgent.out'}", "--wrap", "echo urgent ran; sleep 2"],
                                       capture_output=True, text=True, timeout=60)
        assert urgent_submit.returncode == 0, urgent_submit.stderr
        urgent = urgent_submit.stdout.strip().split(";")[0]
        record = wait_until_ended(job, log)
        urgent_record = wait_until_ended(urgent, tmp_path / "urgent.out")
    finally:
        subprocess.run(["scancel", job, *([urgent] if urgent else [])], capture_output=True, timeout=60)
        if sys.exc_info()[0] is not None:
            reference_proc.kill()
    output = text()
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), output[-4000:]
    assert urgent_record["JobState"] == "COMPLETED", urgent_record
    first, second = output.split(f"job {job} (restart ")[1:]
    assert "Received SIGTERM" in first and f"Requeued SLURM job {job}." in first, first[-3000:]
    assert "Interrupted by SIGTERM" in first and "exit status 143" in first, first[-3000:]
    assert len(saved_steps(first)) == 1 and 2 <= saved_steps(first)[0] < PREEMPT_STEPS, first[-3000:]
    assert f"Resuming from {run / 'checkpoints'}" in second and saved_steps(second) == [PREEMPT_STEPS], second[-3000:]
    reference_out, _ = reference_proc.communicate(timeout=900)
    assert reference_proc.returncode == 0, reference_out[-3000:]
    assert_same_losses(straight, run, PREEMPT_STEPS)
