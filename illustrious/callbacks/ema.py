"""EMA of the trained weights through Lightning's `WeightAveraging` and torch's EMA rule.

    ema_0 = w_first_update,   ema_k = decay * ema_{k-1} + (1 - decay) * w_k

(`torch.optim.swa_utils.get_ema_multi_avg_fn`, a lerp, so weights that do not train stay bit-identical).
Lightning keeps the average in a copy of the module, swaps it in for validation, copies it into the module
when training ends (so the final samples, evaluation and `last` weights are the EMA's), and stores it in
checkpoints: `state_dict` then holds the **EMA** weights and `current_model_state` the raw ones (see
`ema_state_dict` / `raw_state_dict`, which export code should use instead of reading `state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

RAW_KEY = "current_model_state"  # where Lightning's WeightAveraging moves the raw weights in a checkpoint


class EMA(WeightAveraging):
    """Updates after optimizer steps `start_step`, `start_step + every_n_steps`, ... (counted from 1).

    `cpu=True` keeps the averaged copy in host memory (the GPU holds only the model being trained).
    The copy is of the whole module, frozen parts included: with LoRA those are copied but never change.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, start_step: int = 1, cpu: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"callbacks.ema.decay={decay}: must be in [0, 1].")
        if every_n_steps < 1 or start_step < 1:
            raise ValueError(f"callbacks.ema: every_n_steps={every_n_steps} and start_step={start_step} must be >= 1.")
        super().__init__(device="cpu" if cpu else None, use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay, self.every_n_steps, self.start_step = decay, every_n_steps, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:  # only after optimizer steps, never at epoch ends
            return False
        step = step_idx + 1  # optimizer steps taken so far
        return step >= self.start_step and (step - self.start_step) % self.every_n_steps == 0

    @property
    def updates(self) -> int:
        """How many times the average has been updated (0 before the first)."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)


def averages(trainer) -> list[WeightAveraging]:
    """The trainer's weight-averaging callbacks that hold an average (updated at least once)."""
    return [c for c in trainer.callbacks if isinstance(c, WeightAveraging) and c._average_model is not None
            and int(c._average_model.n_averaged) > 0]


def has_average(trainer) -> bool:
    return bool(averages(trainer))


@contextmanager
def averaged_weights(trainer, module) -> Iterator[None]:
    """Inside the block the module holds its weight average (EMA) when a `WeightAveraging` callback has one;
    the trained weights come back afterwards. Used to sample from the EMA during training."""
    averaging = averages(trainer)
    for callback in averaging:
        callback._swap_models(module)
    try:
        yield
    finally:
        for callback in reversed(averaging):
            callback._swap_models(module)


def ema_state_dict(checkpoint: Mapping) -> dict | None:
    """The EMA weights (module state dict) in a training checkpoint, or None if it was written without EMA."""
    return dict(checkpoint["state_dict"]) if RAW_KEY in checkpoint else None


def raw_state_dict(checkpoint: Mapping) -> dict:
    """The trained (not averaged) weights in a training checkpoint, with or without EMA."""
    return dict(checkpoint.get(RAW_KEY, checkpoint["state_dict"]))
