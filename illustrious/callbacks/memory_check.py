"""Before the first step: will a batch of the largest bucket fit in memory? If not, stop and say what to change.

A run whose buckets are too large for the machine used to grow until the kernel killed it, with no message
(a tiny backbone on a folder of 1024-px images in pixel space). This callback measures the activations of a
forward pass on small sizes, extrapolates to the largest bucket (illustrious.memory_estimate), adds
gradients, optimizer state and the EMA copy, and compares that with the free memory of the device (the
GPU's, or the host's share per process). `callbacks.memory_check=null` switches it off.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

from illustrious import memory_estimate as mem
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)


def sharded(strategy) -> bool:
    """Parameters and optimizer state split over processes: the per-rank estimate would differ."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))


class MemoryCheck(L.Callback):
    """`headroom`: the fraction of free memory a step may plan to use (the rest absorbs what the estimate
    leaves out: the allocator's caching and fragmentation, the data loader's workers)."""

    def __init__(self, headroom: float = 0.9):
        if not 0 < headroom <= 1:
            raise ValueError(f"callbacks.memory_check.headroom={headroom}: must be in (0, 1].")
        self.headroom = headroom
        self.estimate: dict | None = None  # the last check's figures (bytes), for logs and tests

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if sharded(trainer.strategy):
            log.info("Memory check skipped under %s (parameters are sharded across processes).",
                     type(trainer.strategy).__name__)
            return
        datamodule = trainer.datamodule
        size = getattr(datamodule, "largest_image_size", None)
        if size is None:
            return
        height, width = size() if callable(size) else size
        batch_size = int(getattr(datamodule, "batch_size", 1))
        device = module.device
        multiple = module.backbone.pixel_multiple
        captions = [""]  # text activations are small and do not grow with the image
        modes = {m: m.training for m in module.modules()}  # restored one by one: frozen parts stay in eval
        module.eval()  # no dropout; the saved tensors are the same
        try:
            activations = mem.BACKWARD_FACTOR * mem.activation_bytes(
                module, height, width, batch_size, captions, multiple, context=trainer.precision_plugin.forward_context())
        finally:
            for m, training in modes.items():
                m.training = training
        optimizer = type(trainer.optimizers[0]).__name__ if trainer.optimizers else "AdamW"
        with_ema = any(isinstance(c, WeightAveraging) for c in trainer.callbacks)
        state = mem.state_bytes(module, optimizer, with_ema)
        sharing = trainer.num_devices if device.type == "cpu" else 1
        free = mem.free_bytes(device, sharing)
        need = activations + sum(state.values())
        self.estimate = {"activations": activations, **state, "need": need, "free": free,
                         "bucket": (width, height), "batch_size": batch_size}
        log.info("Memory check: the largest bucket %dx%d with batch %d needs about %s (activations %s) of %s free.",
                 width, height, batch_size, mem.gigabytes(need), mem.gigabytes(activations), mem.gigabytes(free))
        if need <= self.headroom * free:
            return
        per_sample = activations / batch_size
        fits = int((self.headroom * free - sum(state.values())) // per_sample) if per_sample else 0
        native = getattr(module.backbone, "native_resolution", None)
        raise ConfigError(
            f"The largest bucket, {width}x{height} pixels, will not fit in memory: a batch of {batch_size} needs about "
            f"{mem.gigabytes(need)} (activations {mem.gigabytes(activations)}, gradients and optimizer state "
            f"{mem.gigabytes(state['gradients'] + state['optimizer'])}"
            + (f", EMA copy {mem.gigabytes(state['ema'])}" if state["ema"] else "")
            + f") but {mem.gigabytes(free)} is free on {device.type}. Change one of: "
            + (f"data.batch_size (at most {fits} fits), " if fits >= 1 else "data.batch_size (not even 1 fits), ")
            + "data.bucket_area (fractions of the backbone's native area"
            + (f", {native}x{native}" if native else "") + ") or data.bucket_megapixels, "
            "gradient_checkpointing=[denoiser], a smaller trainer.precision (bf16-mixed on a GPU). "
            "callbacks.memory_check=null skips this check.")
