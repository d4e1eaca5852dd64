"""Sample grids during training: raw and EMA weights side by side when EMA is on, one grid otherwise."""

from __future__ import annotations

import numpy as np
from PIL import Image


def scalars_and_images(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


def test_raw_and_ema_side_by_side(make_config, tmp_path):
    from illustrious.sampling.grid import side_by_side
    from illustrious.train import train

    cfg = make_config("callbacks=ema", "trainer.max_steps=3", "callbacks.samples.every_n_steps=2",
                      "callbacks.composition=null", "resume=false")
    train(cfg)
    step = Image.open(tmp_path / "samples" / "step_000002.png")
    final = Image.open(tmp_path / "samples" / "final_step_000003.png")
    # two grids (raw | EMA) of the final grid's size, under their titles
    assert step.size == side_by_side({"raw weights": final, "EMA weights": final}).size
    tags = scalars_and_images(tmp_path / "tensorboard")
    assert {"samples/raw", "samples/ema"} <= set(tags)
    # the halves come from different weights: at step 2 the EMA (decay 0.999) still lags the trained ones
    pixels = np.asarray(step.convert("RGB"), dtype=np.int16)[16:]
    raw, ema = pixels[:, :final.width], pixels[:, final.width + 8:]
    assert np.abs(raw - ema).max() > 0


def test_one_grid_without_ema(make_config, tmp_path):
    from illustrious.train import train

    cfg = make_config("trainer.max_steps=3", "callbacks.samples.every_n_steps=2", "callbacks.composition=null",
                      "resume=false")
    train(cfg)
    step = Image.open(tmp_path / "samples" / "step_000002.png")
    final = Image.open(tmp_path / "samples" / "final_step_000003.png")
    assert step.size == final.size
    tags = scalars_and_images(tmp_path / "tensorboard")
    assert "samples" in tags and "samples/ema" not in tags
