"""Stop requests from the outside (a scheduler's SIGTERM, SLURM's requeue signal), turned into a checkpoint
at the next step boundary and an exit status that says the run was interrupted.

`listen()` (around the whole of `train()`, so a signal while the model still loads is kept, not fatal) installs
handlers that only record the signal; `RunCheckpoint` (illustrious.callbacks.checkpointing)
looks at `received()` after every step, saves, requeues under SLURM when the signal asked for it, logs the
interruption at once (a requeue makes SLURM kill the job within moments) and raises `TrainingInterrupted`, whose
`exit_code` (128 + the signal number, as a shell reports a process killed by it: 143 for SIGTERM, 138 for SIGUSR1)
the command line exits with. A scheduler therefore never records a
preempted run as a success, and the next start resumes from the checkpoint written on the way out.

One handler, ours: under SLURM `train()` gives Lightning a `SLURMEnvironment(auto_requeue=False)`, so Lightning
never installs its SIGUSR1 handler (which would write a separate `hpc_ckpt_N.ckpt` and resume from it first);
after our checkpoint, global rank 0 runs `scontrol requeue` (RunCheckpoint, `callbacks.checkpoint.requeue`), on a
requeue signal, or on SIGTERM when SLURM is preempting the job (`slurm_job_preempted`; a user's scancel is not).
SLURM's warning signal is SIGUSR2 everywhere (`scripts/sbatch_train.sh`: `--signal=USR2@90`;
`hydra/launcher=slurm`: submitit's fixed USR2); SIGUSR1 is handled the same way for other scripts.
Our handlers are installed again once training starts (`reinstall`), replacing Lightning's SIGTERM handler:
that one makes the loop raise SystemExit with status 0 at the end of the step, before our checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# SIGTERM: schedulers' "stop now" (SLURM's scancel and time limit, Kubernetes, systemd). SIGUSR2 (or SIGUSR1): the
# signal SLURM sends ahead of the time limit with `#SBATCH --signal=USR2@90`, asking for a requeue.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

_received: int | None = None
_listening: tuple = ()
_from_start: dict = {}  # signal -> the handler before `listen_from_start()`, while its recording is unclaimed


class TrainingInterrupted(Exception):
    """The run stopped because it was asked to; its state was saved first (`checkpoint`)."""

    def __init__(self, signum: int, checkpoint: str | None, requeued: bool = False):
        self.signum, self.checkpoint, self.requeued = signum, checkpoint, requeued
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        saved = f"state saved to {checkpoint}" if checkpoint else "no checkpoint could be written"
        then = "requeued with SLURM" if requeued else "start the same command again to resume"
        super().__init__(f"Interrupted by {name}: {saved}; {then} (exit status {self.exit_code}).")


def received() -> int | None:
    """The first stop signal received while listening, or None."""
    return _received


# Ranks agree on one signal: the strongest any of them received. A requeue signal outranks SIGTERM, so that global
# rank 0 requeues the job even when only another rank's handler had run by the step boundary (SLURM signals every
# task, but not at the same instant).
_RANK_ORDER = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def signal_code(signum: int | None) -> int:
    """0 for no signal, else 1 + its place in `_RANK_ORDER` (a number ranks can reduce with max)."""
    return 0 if signum is None else 1 + _RANK_ORDER.index(signum)


def signal_of(code: int) -> int | None:
    return None if code == 0 else _RANK_ORDER[code - 1]


def agree(signum: int | None, reduce_max) -> int | None:
    """The signal every rank acts on: `reduce_max(tensor)` returns the elementwise max over ranks."""
    import torch

    return signal_of(int(reduce_max(torch.tensor(signal_code(signum), dtype=torch.int64))))


def _record(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signum
        log.warning("Received %s: saving a checkpoint at the end of this step, then stopping.",
                    signal.Signals(signum).name)


def listen_from_start(signals=STOP_SIGNALS) -> None:
    """Record stop signals from now on (the command line calls this before it imports Hydra): a signal in the
    seconds before `train()` (interpreter, imports, config composition) is kept for the first `listen()` block to
    act on, instead of killing the process unrequeued. Main thread only."""
    global _received
    if threading.current_thread() is not threading.main_thread() or _from_start:
        return
    _received = None
    _from_start.update({s: signal.signal(s, _record) for s in signals})


@contextmanager
def listen(signals=STOP_SIGNALS) -> Iterator[None]:
    """Record stop signals while the block runs (main thread only; elsewhere signals cannot be caught). The first
    block after `listen_from_start()` keeps a signal received since then; later blocks start clean."""
    global _received, _listening
    early = dict(_from_start)
    _from_start.clear()
    if not early:
        _received = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _record) for s in signals}
    # after the block, the handlers from before listen_from_start() (not its recorder) are put back
    previous.update((s, h) for s, h in early.items() if s in previous)
    _listening = tuple(signals)
    try:
        yield
    finally:
        _listening = ()
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def reinstall() -> None:
    """Put our handlers back over any installed since `listen()` began (Lightning's, at the start of fit)."""
    if _listening and threading.current_thread() is threading.main_thread():
        for s in _listening:
            signal.signal(s, _record)


def _slurm_job() -> str | None:
    """This SLURM job's id for scontrol (`<array job>_<task>` for an array task), or None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def slurm_job_preempted() -> bool:
    """Whether SLURM is preempting this job: its record carries a PreemptTime. A preemption sends SIGTERM (unless
    the cluster sets PreemptParameters=send_user_signal, which sends the job's --signal instead), as a user's
    `scancel` does; only a preempted job is requeued after a SIGTERM. A preempted job that saves and exits within
    its grace time, as our runs do, is not requeued by SLURM (Slurm 22.05: it ends FAILED or COMPLETED)."""
    job = _slurm_job()
    if job is None:
        return False
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("Could not read SLURM job %s: %s", job, e)
        return False
    found = re.search(r"\bPreemptTime=(\S+)", out)
    return bool(found) and found.group(1) not in ("None", "Unknown", "(null)")


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM job (array task included); True when SLURM accepted it."""
    job = _slurm_job()
    if job is None:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("Could not requeue SLURM job %s: %s", job, e)
        return False
    if result.returncode:
        log.error("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
        return False
    log.info("Requeued SLURM job %s.", job)
    return True
