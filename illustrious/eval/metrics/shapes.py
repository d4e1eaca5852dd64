"""The shapes judge (illustrious/eval/composition.py) as a torchmetrics Metric, and prompts read back as layouts.

`ShapesJudge` sums the judge's per-image figures over batches and processes; `compute()` equals
`composition.summarize` over everything seen: composition and shape as fractions of all prompted shapes,
background as a fraction of images, cleanliness as the mean background standard deviation (0-255 levels).

`parse_layout` reads a prompt that the shapes data writes (its sentence or its tags caption) back into the
layout the judge scores against, so an evaluation prompt file of shapes prompts needs nothing else.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor
from torchmetrics import Metric

from illustrious.data.sources.shapes import BACKGROUNDS, POSITIONS, SHAPE_COLOURS, SHAPES, Layout, ShapeSpec
from illustrious.eval.composition import FIGURES, judge
from illustrious.eval.metrics.images import as_hwc_numpy

_ALT = {"colour": "|".join(SHAPE_COLOURS), "shape": "|".join(SHAPES), "background": "|".join(BACKGROUNDS),
        "position": "|".join(POSITIONS)}
_SENTENCE_SHAPE = re.compile(rf"an? ({_ALT['colour']}) ({_ALT['shape']}) (?:on the ({_ALT['position']})|in the (center))")
_SENTENCE = re.compile(rf"(.+), on an? ({_ALT['background']}) background\.?")
_TAG_SHAPE = re.compile(rf"({_ALT['colour']}) ({_ALT['shape']}) ({_ALT['position']})")
_TAG_BACKGROUND = re.compile(rf"({_ALT['background']}) background")


def parse_layout(prompt: str) -> Layout | None:
    """The layout a shapes prompt describes (`Layout.sentence()` or `Layout.tags()` form); None for any other text."""
    text = prompt.strip().lower()
    sentence = _SENTENCE.fullmatch(text)
    if sentence:
        parts = sentence.group(1).split(" and ")
        matches = [_SENTENCE_SHAPE.fullmatch(p.strip()) for p in parts]
        if all(matches):
            shapes = tuple(ShapeSpec(m.group(1), m.group(2), m.group(3) or m.group(4)) for m in matches)
            return Layout(sentence.group(2), shapes)
        return None
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if len(tags) < 2 or not _TAG_BACKGROUND.fullmatch(tags[-1]):
        return None
    matches = [_TAG_SHAPE.fullmatch(t) for t in tags[:-1]]
    if not all(matches):
        return None
    return Layout(_TAG_BACKGROUND.fullmatch(tags[-1]).group(1), tuple(ShapeSpec(*m.groups()) for m in matches))


def layouts_of(prompts: list[str | Layout]) -> list[Layout]:
    """Layouts as given, prompts parsed; a prompt that is not a shapes prompt is an error naming it."""
    layouts = []
    for prompt in prompts:
        layout = prompt if isinstance(prompt, Layout) else parse_layout(prompt)
        if layout is None:
            raise ValueError(f"Not a shapes prompt: {prompt!r}. The shapes judge needs prompts written like "
                             "'A red circle on the left, on a black background.'")
        layouts.append(layout)
    return layouts


class ShapesJudge(Metric):
    """`update(images, layouts_or_prompts)`; `compute()` -> {composition, shape, background, cleanliness}."""

    full_state_update = False
    higher_is_better = None  # cleanliness is lower-is-better, the accuracies higher

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # prompted shapes placed / drawn right, shapes prompted, images with the right background, background std
        for name in ("placed", "drawn", "num_shapes", "backgrounds", "cleanliness_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, images: Tensor, layouts: list[Layout | str]) -> None:
        scores = judge(as_hwc_numpy(images), layouts_of(list(layouts)))  # (N, H, W, 3) uint8
        scores = {k: v.to(self.placed.device) for k, v in scores.items()}
        self.placed += (scores["composition"] * scores["num_shapes"]).sum()
        self.drawn += (scores["shape"] * scores["num_shapes"]).sum()
        self.num_shapes += scores["num_shapes"].sum()
        self.backgrounds += scores["background"].sum()
        self.cleanliness_sum += scores["cleanliness"].sum()
        self.count += len(scores["background"])

    def compute(self) -> dict[str, Tensor]:
        shapes, images = self.num_shapes.clamp(min=1), self.count.clamp(min=1)
        values = {"composition": self.placed / shapes, "shape": self.drawn / shapes,
                  "background": self.backgrounds / images, "cleanliness": self.cleanliness_sum / images}
        return {k: values[k] for k in FIGURES}
