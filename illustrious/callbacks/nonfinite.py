"""NonFiniteGuard: a NaN/Inf loss or gradient never reaches the weights.

Checked after the backward pass, before the optimizer step (and before gradient clipping). Policies:
- `skip`: the optimizer step is skipped (gradients dropped, so no parameter, moment or weight decay changes;
  the LR schedule still advances, as with fp16's gradient scaler), counted in `train/nonfinite_steps` and
  logged; after `max_consecutive` skipped steps in a row the run stops (a diverged run, not a spike).
- `stop`: the run stops at once with a message naming the step, epoch and batch; the last good checkpoint
  stays as it was (RunCheckpoint also refuses to write NaN/Inf weights).

With fp16's gradient scaler, Inf/NaN gradients are the scaler's business (it skips the step and lowers the
scale) and only a non-finite loss counts. Under DDP the decision is taken jointly, so ranks never diverge.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback

from illustrious.errors import ConfigError

log = logging.getLogger(__name__)

POLICIES = ("skip", "stop")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/Inf loss or gradient."""


class NonFiniteGuard(Callback):
    def __init__(self, policy: str = "skip", max_consecutive: int = 8):
        if policy not in POLICIES:
            raise ConfigError(f"callbacks.nonfinite.policy={policy!r}: must be one of {', '.join(POLICIES)}.")
        if max_consecutive < 1:
            raise ConfigError(f"callbacks.nonfinite.max_consecutive={max_consecutive}: must be >= 1.")
        self.policy, self.max_consecutive = policy, max_consecutive
        self.skipped = 0  # steps skipped in the whole run (kept in checkpoints)
        self.consecutive = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        checks = [torch.isfinite(self._loss).all()] if self._loss is not None else []
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None and grads:
            checks += [torch.isfinite(g).all() for g in grads]
        bad = bool(checks) and not bool(torch.stack([c.to(checks[0].device) for c in checks]).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        self._loss = None
        if not bad:
            self.consecutive = 0
            return
        where = self._where(trainer)
        if self.policy == "stop" or self.consecutive + 1 >= self.max_consecutive:
            run = ("" if self.policy == "stop" else
                   f" after {self.consecutive} skipped steps in a row (callbacks.nonfinite.max_consecutive)")
            raise NonFiniteLossError(
                f"Non-finite loss or gradient at {where}{run}; stopping. {self._last_good(trainer)} Lower the "
                "learning rate, check the data of that batch, or set callbacks.nonfinite.policy=skip.")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers skip parameters without a gradient: no step at all
        self.skipped += 1
        self.consecutive += 1
        log.warning("Non-finite loss or gradient at %s: optimizer step skipped (%d so far).", where, self.skipped)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/nonfinite_steps", float(self.skipped), batch_size=1)

    @staticmethod
    def _where(trainer) -> str:
        return (f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                f"{trainer.fit_loop.epoch_loop.batch_idx} of the epoch)")

    @staticmethod
    def _last_good(trainer) -> str:
        saved = [c.last_good() for c in trainer.checkpoint_callbacks if hasattr(c, "last_good")]
        saved = [s for s in saved if s]
        return (f"The last good checkpoint, {saved[0]}, is unchanged." if saved else
                "No checkpoint had been written yet.")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.consecutive = int(state.get("skipped", 0)), int(state.get("consecutive", 0))
