"""Sample images with their prompts every N steps and at the end of training (PNG + TensorBoard).

With EMA on, the grids during training show the raw and the EMA weights side by side (same prompts and seeds;
TensorBoard tags samples/raw and samples/ema). At the end of training the EMA weights have replaced the raw
ones in the module (callbacks/ema.py), so the final grid is the EMA's alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np

from illustrious.callbacks.ema import averaged_weights, has_average
from illustrious.eval.composition import to_uint8
from illustrious.sampling.grid import image_grid, side_by_side

log = logging.getLogger(__name__)
TITLES = {"raw": "raw weights", "ema": "EMA weights"}


def sample_images(trainer: L.Trainer, module, prompts: list[str], height: int, width: int, **settings) -> np.ndarray:
    """Generate under the trainer's precision, from the EMA weights when EMA is on; returns (N, H, W, 3) uint8."""
    with trainer.precision_plugin.forward_context(), averaged_weights(trainer, module):
        pixels = module.generate(prompts, height=height, width=width, **settings)
    return to_uint8(pixels)


def sample_raw_and_ema(trainer: L.Trainer, module, prompts: list[str], height: int, width: int,
                       **settings) -> dict[str, np.ndarray]:
    """{"raw": images} from the trained weights and, when EMA holds an average, {"ema": images} from it too."""
    with trainer.precision_plugin.forward_context():
        images = {"raw": to_uint8(module.generate(prompts, height=height, width=width, **settings))}
    if has_average(trainer):
        images["ema"] = sample_images(trainer, module, prompts, height, width, **settings)
    return images


def generates_on_every_rank(trainer: L.Trainer) -> bool:
    """Whether sampling must run on every rank: with sharded weights (FSDP, FSDP2, DeepSpeed) each forward gathers
    parameters from all ranks, so all of them generate the same images (rank 0 alone would wait forever)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    return trainer.world_size > 1 and isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy,
                                                                    DeepSpeedStrategy))


def image_size(trainer: L.Trainer, height: int | None, width: int | None) -> tuple[int, int]:
    dm_size = getattr(trainer.datamodule, "image_size", None)
    if height and width:
        return height, width
    if dm_size is None:
        raise ValueError("Set callbacks.samples.height/width: the data module does not say its image size.")
    return dm_size


class SampleGrid(L.Callback):
    """`prompts` if given, else the data module's held-out prompts (`sample_prompts(n)`)."""

    def __init__(self, every_n_steps: int = 0, num_prompts: int = 16, prompts: list[str] | None = None,
                 height: int | None = None, width: int | None = None, columns: int = 8, seed: int = 0):
        self.every_n_steps, self.num_prompts, self.prompts = every_n_steps, num_prompts, prompts
        self.height, self.width, self.columns, self.seed = height, width, columns, seed
        self.last_path: Path | None = None

    def _prompts(self, trainer) -> list[str]:
        if self.prompts:
            return list(self.prompts)
        if hasattr(trainer.datamodule, "sample_prompts"):
            return trainer.datamodule.sample_prompts(self.num_prompts)
        raise ValueError("Set callbacks.samples.prompts: the data module offers no sample prompts.")

    def _write(self, trainer, module, name: str, final: bool = False) -> None:
        if not (trainer.is_global_zero or generates_on_every_rank(trainer)):
            return
        prompts = self._prompts(trainer)
        h, w = image_size(trainer, self.height, self.width)
        if final:  # the module holds the EMA weights by now, if EMA is on
            variants = {"ema" if has_average(trainer) else "raw": sample_images(trainer, module, prompts, h, w, seed=self.seed)}
        else:
            variants = sample_raw_and_ema(trainer, module, prompts, h, w, seed=self.seed)
        if not trainer.is_global_zero:
            return  # took part in the sharded forward passes; rank 0 writes
        out = Path(trainer.default_root_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        self.last_path = out / f"{name}.png"
        grids = {TITLES[k]: image_grid(images, prompts, columns=self.columns) for k, images in variants.items()}
        (side_by_side(grids) if len(grids) > 1 else next(iter(grids.values()))).save(self.last_path)
        log.info("Samples written to %s", self.last_path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_images"):
            for kind, images in variants.items():
                tag = "samples" if variants.keys() == {"raw"} else f"samples/{kind}"
                experiment.add_images(tag, images, global_step=trainer.global_step, dataformats="NHWC")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step < (trainer.max_steps or 0):
            self._write(trainer, module, f"step_{step:06d}")

    def on_train_end(self, trainer, module) -> None:
        self._write(trainer, module, f"final_step_{trainer.global_step:06d}", final=True)
