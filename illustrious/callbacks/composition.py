"""At the end of training on `data=shapes`: sample held-out prompts and report composition accuracy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from illustrious.callbacks.samples import image_size, sample_images
from illustrious.eval.composition import chance_accuracy, composition_accuracy
from illustrious.sampling.grid import image_grid

log = logging.getLogger(__name__)


class CompositionEval(L.Callback):
    """Needs a data module with `eval_layouts(n)` (the shapes data); does nothing for other data."""

    def __init__(self, num_samples: int = 64, seed: int = 1234):
        self.num_samples, self.seed = num_samples, seed
        self.results: dict | None = None

    def on_train_end(self, trainer, module) -> None:
        if not trainer.is_global_zero or not hasattr(trainer.datamodule, "eval_layouts"):
            return
        layouts = trainer.datamodule.eval_layouts(self.num_samples)
        prompts = [layout.sentence() for layout in layouts]
        h, w = image_size(trainer, None, None)
        images = sample_images(trainer, module, prompts, h, w, seed=self.seed)
        self.results = {
            "eval/composition_accuracy": composition_accuracy(images, layouts),
            "eval/composition_chance": chance_accuracy(images, layouts),
        }
        out = Path(trainer.default_root_dir)
        image_grid(images, prompts, columns=8).save(out / "composition_samples.png")
        (out / "composition.json").write_text(json.dumps(
            {**self.results, "num_samples": self.num_samples, "prompts": prompts}, indent=2))
        for key, value in self.results.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        if trainer.logger is not None:
            trainer.logger.log_metrics(self.results, step=trainer.global_step)
        log.info("Composition accuracy on %d held-out prompts: %.3f (same samples against mismatched prompts: %.3f)",
                 self.num_samples, self.results["eval/composition_accuracy"], self.results["eval/composition_chance"])
