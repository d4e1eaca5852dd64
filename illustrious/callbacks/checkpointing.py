"""RunCheckpoint: the run's training state on disk, every N steps, at the final step, and on a stop signal.

Saved at the end of a step (where Lightning's own ModelCheckpoint saves, so a resumed run continues with
the next batch), after every other callback's end-of-step work (EMA's update included): Lightning runs
`Checkpoint` callbacks last. Files and resume selection: illustrious.checkpoint_folder. A state with NaN/Inf
weights is never written (training stops instead, leaving the last good checkpoint as it was).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint

from illustrious import preemption
from illustrious.checkpoint_folder import CheckpointFolder
from illustrious.checkpoint_io import NonFiniteError
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)


def first_nonfinite(state_dict: dict) -> str | None:
    """The name of the first floating tensor holding NaN/Inf; sharded (DTensor) weights are checked on
    this rank's shard only (no collective per tensor)."""
    for name, value in state_dict.items():
        local = value.to_local() if hasattr(value, "to_local") else value
        if local.is_floating_point() and local.numel() and not bool(torch.isfinite(local).all()):
            return name
    return None


class RunCheckpoint(Checkpoint):
    def __init__(self, dirpath: str, every_n_train_steps: int = 200, keep_last: int = 2, requeue: bool = True):
        if every_n_train_steps < 0:
            raise ConfigError(f"callbacks.checkpoint.every_n_train_steps={every_n_train_steps}: must be >= 0 "
                              "(0 = only at the final step and when stopped by a signal).")
        if keep_last < 1:
            raise ConfigError(f"callbacks.checkpoint.keep_last={keep_last}: must be >= 1 (the newest checkpoint is "
                              "always kept).")
        self.folder = CheckpointFolder(dirpath)
        self.every_n_train_steps, self.keep_last, self.requeue = every_n_train_steps, keep_last, requeue
        self.last_saved: Path | None = None
        self._saved_step = -1

    @property
    def dirpath(self) -> Path:
        return self.folder.dir

    # -- when -----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        preemption.reinstall()  # over Lightning's SIGTERM handler (see illustrious.preemption)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        signum = preemption.received()
        if trainer.world_size > 1:  # every rank must take part in the save: stop if any rank was signalled
            signum = preemption.agree(signum, lambda code: trainer.strategy.reduce(code.to(pl_module.device),
                                                                                   reduce_op="max"))
        due = self.every_n_train_steps > 0 and step % self.every_n_train_steps == 0
        if step != self._saved_step and (due or signum is not None or self._is_final(trainer)):
            self.save(trainer, pl_module)
        if signum is not None:
            self._stop(trainer, signum)

    @staticmethod
    def _is_final(trainer) -> bool:
        if trainer.should_stop:  # another callback (early stopping) ends the run after this step
            return True
        if 0 < trainer.max_steps <= trainer.global_step:
            return True
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        # max_epochs -1 (what Lightning sets when only max_steps is given) means no epoch limit: no epoch is the last
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        return bool(last_batch and epochs and trainer.current_epoch + 1 >= epochs)

    # -- how ------------------------------------------------------------------------------------------------
    def save(self, trainer, pl_module) -> Path:
        step = trainer.global_step
        # every rank checks its own weights (its shards under FSDP2), and all stop together, before the
        # collective save starts
        bad = first_nonfinite(pl_module.state_dict())
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            bad = bad or "on another rank"
        if bad is not None:
            raise NonFiniteError(
                f"Step {step}: weight {bad} holds NaN or Inf values; not saving a checkpoint over the last good "
                f"one ({self.last_saved or 'none written in this run'}). Lower the learning rate or enable "
                "callbacks.nonfinite.policy=skip, and resume.")
        path = self.folder.step_path(step)
        trainer.save_checkpoint(path)  # every rank takes part: rank 0 writes a file, or each rank its shards
        if trainer.is_global_zero:
            self.folder.point_last_at(path)
            self.folder.prune(self.keep_last)
        trainer.strategy.barrier("RunCheckpoint.save")
        self._saved_step, self.last_saved = step, self.folder.last
        log.info("Saved checkpoint at step %d: %s", step, path)
        return path

    def last_good(self) -> Path | None:
        """The newest checkpoint of this run's folder (written by this process or an earlier one)."""
        return self.last_saved or (self.folder.last if self.folder.last.exists() else None)

    def _stop(self, trainer, signum: int) -> None:
        requeued = False
        env = trainer._accelerator_connector.cluster_environment
        # Lightning's own auto-requeue is off (train.slurm_environment): this is the one place a job requeues
        if self.requeue and isinstance(env, SLURMEnvironment) and trainer.is_global_zero and (
                signum in preemption.REQUEUE_SIGNALS or preemption.slurm_job_preempted()):
            requeued = preemption.requeue_slurm_job()
        stop = preemption.TrainingInterrupted(signum, str(self.last_saved) if self.last_saved else None, requeued)
        # said here, the one place it is raised, not after the unwinding: a requeue makes SLURM kill the job
        # within moments
        log.warning("%s", stop)
        raise stop

    # -- its own state (nothing about paths: a copied run folder saves into its own) -----------------------
    def state_dict(self) -> dict:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state: dict) -> None:
        self._saved_step = int(state.get("saved_step", -1))
