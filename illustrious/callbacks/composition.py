"""At the end of training on `data=shapes`: sample held-out prompts and judge them (eval/composition.py).

Four figures go to the log, the logger, `trainer.callback_metrics` and `<output_dir>/composition.json`:
composition, shape and background accuracy (with their chance: the same samples against mismatched
prompts) and cleanliness, the standard deviation of background pixels in 0-255 levels (no chance level: it
does not depend on the prompt). The samples are kept as a grid PNG and as `composition_samples.npz`
(uint8 images + layouts as JSON) so they can be judged again without sampling.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch

from illustrious.callbacks.samples import generates_on_every_rank, image_size, sample_images
from illustrious.eval.composition import chance_scores, judge, summarize
from illustrious.sampling.grid import image_grid

log = logging.getLogger(__name__)

# judge figure -> metric name (composition keeps its historical name, which sweeps optimise)
METRICS = {"composition": "eval/composition_accuracy", "shape": "eval/shape_accuracy",
           "background": "eval/background_accuracy", "cleanliness": "eval/background_std"}
CHANCE = {"composition": "eval/composition_chance", "shape": "eval/shape_chance",
          "background": "eval/background_chance"}


class CompositionEval(L.Callback):
    """Needs a data module with `eval_layouts(n)` (the shapes data); does nothing for other data."""

    def __init__(self, num_samples: int = 64, seed: int = 1234):
        self.num_samples, self.seed = num_samples, seed
        self.results: dict | None = None

    def on_train_end(self, trainer, module) -> None:
        if not (trainer.is_global_zero or generates_on_every_rank(trainer)):
            return
        if not hasattr(trainer.datamodule, "eval_layouts"):
            return
        layouts = trainer.datamodule.eval_layouts(self.num_samples)
        prompts = [layout.sentence() for layout in layouts]
        h, w = image_size(trainer, None, None)
        images = sample_images(trainer, module, prompts, h, w, seed=self.seed)
        if not trainer.is_global_zero:
            return  # took part in the sharded forward passes; rank 0 judges and writes
        figures, chance = summarize(judge(images, layouts)), chance_scores(images, layouts)
        self.results = {**{METRICS[k]: v for k, v in figures.items()}, **{CHANCE[k]: chance[k] for k in CHANCE}}
        out = Path(trainer.default_root_dir)
        image_grid(images, prompts, columns=8).save(out / "composition_samples.png")
        np.savez_compressed(out / "composition_samples.npz", images=images,
                            layouts=np.array([json.dumps(layout.to_dict()) for layout in layouts]))
        (out / "composition.json").write_text(json.dumps(
            {**self.results, "num_samples": self.num_samples, "prompts": prompts}, indent=2))
        for key, value in self.results.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        if trainer.logger is not None:
            trainer.logger.log_metrics(self.results, step=trainer.global_step)
        log.info("Judged %d held-out prompts (against mismatched prompts in brackets): composition %.3f (%.3f), "
                 "shape %.3f (%.3f), background %.3f (%.3f), cleanliness: background std %.1f levels",
                 self.num_samples, figures["composition"], chance["composition"], figures["shape"], chance["shape"],
                 figures["background"], chance["background"], figures["cleanliness"])
