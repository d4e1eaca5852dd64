"""Built-in synthetic text-to-image data: coloured shapes at named positions on plain backgrounds.

Every image is drawn procedurally and deterministically from (seed, index), at any resolution and aspect
ratio, and keeps its ground-truth layout so that samples can be scored for composition (eval/composition).
Each sample carries two captions, comma-separated tags and an English sentence; the caption pipeline picks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from illustrious.data.captions.rng import CaptionKey, epoch_of
from illustrious.data.loading.sample import sample_record

# Saturated, mutually distant colours for shapes; neutral colours for backgrounds.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (245, 225, 30),
    "magenta": (230, 40, 220),
    "cyan": (30, 220, 230),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
# Two shapes never overlap: they sit in opposite halves.
POSITION_PAIRS = (("left", "right"), ("top", "bottom"))


@dataclass(frozen=True)
class ShapeSpec:
    colour: str
    shape: str
    position: str


@dataclass(frozen=True)
class Layout:
    background: str
    shapes: tuple[ShapeSpec, ...]

    def tags(self) -> str:
        parts = [f"{s.colour} {s.shape} {s.position}" for s in self.shapes]
        return ", ".join([*parts, f"{self.background} background"])

    def sentence(self) -> str:
        def place(p: str) -> str:
            return "in the center" if p == "center" else f"on the {p}"

        parts = [f"a {s.colour} {s.shape} {place(s.position)}" for s in self.shapes]
        return f"{' and '.join(parts).capitalize()}, on a {self.background} background."

    def to_dict(self) -> dict:
        return {"background": self.background,
                "shapes": [{"colour": s.colour, "shape": s.shape, "position": s.position} for s in self.shapes]}

    @staticmethod
    def from_dict(d: dict) -> Layout:
        return Layout(d["background"], tuple(ShapeSpec(**s) for s in d["shapes"]))


def region(position: str, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a named position: a half of the image, or its central quarter."""
    w2, h2 = width // 2, height // 2
    return {
        "left": (0, 0, w2, height),
        "right": (width - w2, 0, width, height),
        "top": (0, 0, width, h2),
        "bottom": (0, height - h2, width, height),
        "center": (width // 4, height // 4, width - width // 4, height - height // 4),
    }[position]


def random_layout(rng: random.Random, max_shapes: int = 2, mixed_order: bool = False) -> Layout:
    """A background and one shape, or (with max_shapes >= 2, half the time) two in opposite halves. Pairs are
    mentioned left/top first unless `mixed_order`: then either one first, so that the side words, not the order
    of mention, say where each shape goes."""
    background = rng.choice(list(BACKGROUNDS))
    if max_shapes >= 2 and rng.random() < 0.5:
        positions = rng.choice(POSITION_PAIRS)
        if mixed_order and rng.random() < 0.5:
            positions = positions[::-1]
        colours = rng.sample(list(SHAPE_COLOURS), 2)  # two different colours keep the binding unambiguous
    else:
        positions = (rng.choice(POSITIONS),)
        colours = (rng.choice(list(SHAPE_COLOURS)),)
    return Layout(background, tuple(ShapeSpec(c, rng.choice(SHAPES), p) for c, p in zip(colours, positions, strict=True)))


def draw(layout: Layout, width: int, height: int, rng: random.Random, supersample: int = 4) -> Image.Image:
    """Render a layout; each shape fills most of its region's short side, with a little jitter."""
    s = supersample
    image = Image.new("RGB", (width * s, height * s), BACKGROUNDS[layout.background])
    pen = ImageDraw.Draw(image)
    for spec in layout.shapes:
        x0, y0, x1, y1 = (v * s for v in region(spec.position, width, height))
        side = min(x1 - x0, y1 - y0)
        size = side * rng.uniform(0.6, 0.8)
        cx = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * side
        cy = (y0 + y1) / 2 + rng.uniform(-0.08, 0.08) * side
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        colour = SHAPE_COLOURS[spec.colour]
        if spec.shape == "circle":
            pen.ellipse(box, fill=colour)
        elif spec.shape == "square":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return image.resize((width, height), Image.Resampling.BOX) if s > 1 else image


class ShapesDataset:
    """A map-style dataset of `length` images drawn on the fly; item i depends only on (seed, i).

    Items are dicts with `pixels` (3, H, W) float in [-1, 1], `captions` {"tags", "sentence"}, `layout`
    and the SDXL micro-conditioning sizes.
    """

    def __init__(self, length: int = 10_000, width: int = 32, height: int = 32, seed: int = 0, max_shapes: int = 2,
                 mixed_order: bool = False):
        if length < 1:
            raise ValueError(f"ShapesDataset length must be >= 1, got {length}")
        if width < 8 or height < 8:
            raise ValueError(f"ShapesDataset needs at least 8x8 pixels, got {width}x{height}")
        self.length, self.width, self.height, self.seed, self.max_shapes = length, width, height, seed, max_shapes
        self.mixed_order = mixed_order

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> random.Random:
        return random.Random(f"shapes:{self.seed}:{index}")

    def layout(self, index: int) -> Layout:
        return random_layout(self.rng(index), self.max_shapes, self.mixed_order)

    def caption_source(self, index: int) -> dict[str, str]:
        """Sample `index`'s captions, without drawing its image (text caches, chunk grouping)."""
        return captions_of(self.layout(index))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self.rng(index)
        layout = random_layout(rng, self.max_shapes, self.mixed_order)
        image = draw(layout, self.width, self.height, rng)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        size = (self.height, self.width)
        return sample_record(captions_of(layout), (size, (0, 0), size),
                             pixels=pixels, layout=layout.to_dict(),
                             caption_key=CaptionKey(self.seed, epoch_of(index), int(index)))


def captions_of(layout: Layout) -> dict[str, str]:
    return {"tags": layout.tags(), "sentence": layout.sentence()}


def vocabulary() -> list[str]:
    """Every word a shapes caption can use (for building the tiny tokenizers)."""
    words = {*SHAPE_COLOURS, *BACKGROUNDS, *SHAPES, *POSITIONS, "background", "a", "and", "on", "in", "the"}
    return sorted(words)
