"""Stop signals (illustrious.preemption). Ranks agree on the signal at a step boundary: the strongest one any rank
received, a requeue signal over SIGTERM. SLURM signals every task, but not at the same instant; if only rank 1's
handler had run when the step ended, rank 0 must still save, and requeue the job, as rank 1 was asked to. The
command line records signals from its first line only when it trains in that process."""

from __future__ import annotations

import json
import signal

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from illustrious import preemption

TERM, USR1, USR2 = signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2
# (rank 0 received, rank 1 received) -> what both act on
CASES = [((None, None), None), ((None, USR2), USR2), ((USR2, None), USR2), ((TERM, USR2), USR2),
         ((USR2, TERM), USR2), ((TERM, None), TERM), ((None, TERM), TERM), ((USR1, TERM), USR1), ((USR1, USR2), USR2)]


def test_one_process_acts_on_its_own_signal():
    for signum in (None, TERM, USR1, USR2):
        assert preemption.agree(signum, lambda code: code) == signum


def test_every_stop_signal_has_a_code_and_back():
    codes = [preemption.signal_code(s) for s in (None, *preemption.STOP_SIGNALS)]
    assert len(set(codes)) == len(codes) and codes[0] == 0
    assert [preemption.signal_of(c) for c in codes] == [None, *preemption.STOP_SIGNALS]


def worker(rank, init_file, out_file):
    # Lightning's DDP/FSDP strategies' reduce(tensor, reduce_op="max") is this call
    from lightning.fabric.utilities.distributed import _sync_ddp_if_available

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        agreed = [preemption.agree(received[rank], lambda code: _sync_ddp_if_available(code, None, reduce_op="max"))
                  for received, _ in CASES]
        with open(f"{out_file}.{rank}", "w") as f:
            json.dump(agreed, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch
def test_two_ranks_agree_on_the_strongest_signal(tmp_path):
    out = tmp_path / "agreed"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    expected = [None if want is None else int(want) for _, want in CASES]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"agreed.{rank}").read_text()) == expected, rank


@pytest.mark.parametrize("argv,records", [
    (["run.py"], True),
    (["run.py", "trainer.max_steps=2", "objective=eps"], True),
    (["run.py", "-m", "hydra/launcher=slurm", "objective=eps,flow"], False),  # a sweep: jobs run elsewhere
    (["run.py", "--multirun", "objective=eps,flow"], False),
    (["run.py", "--cfg", "job"], False),
    (["run.py", "--help"], False),
    (["run.py", "--info=searchpath"], False),
])
def test_the_command_line_records_stop_signals_from_the_start_only_when_it_trains_here(argv, records):
    """A process that only submits a sweep, or prints help, must still stop on SIGTERM as usual."""
    from illustrious.run import listen_if_training

    before = signal.getsignal(signal.SIGTERM)
    try:
        listen_if_training(argv)
        assert (signal.getsignal(signal.SIGTERM) is preemption._record) is records
        with preemption.listen():  # the first listen() block takes over, then puts the original handlers back
            assert signal.getsignal(signal.SIGTERM) is preemption._record
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        preemption._from_start.clear()
        signal.signal(signal.SIGTERM, before)


def test_a_requeued_run_says_so_before_slurm_can_kill_it(tmp_path, monkeypatch, caplog):
    """`scontrol requeue` makes SLURM kill the job within moments, often before the exception has unwound
    through Lightning to the command line: the interruption is logged where it is raised, right after the
    requeue, once."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from illustrious.callbacks.checkpointing import RunCheckpoint

    monkeypatch.setattr(preemption, "requeue_slurm_job", lambda: True)
    callback = RunCheckpoint(str(tmp_path / "checkpoints"))
    callback.last_saved = tmp_path / "checkpoints" / "step-00000006.safetensors"
    trainer = SimpleNamespace(is_global_zero=True, _accelerator_connector=SimpleNamespace(
        cluster_environment=SLURMEnvironment(auto_requeue=False)))
    with caplog.at_level("WARNING"), pytest.raises(preemption.TrainingInterrupted) as stop:
        callback._stop(trainer, USR2)
    expected = (f"Interrupted by SIGUSR2: state saved to {callback.last_saved}; requeued with SLURM "
                f"(exit status {128 + USR2}).")
    assert str(stop.value) == expected
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [expected]
