"""The shapes judge: each figure is exact on hand-drawn images, ~perfect on training images, low on mismatches."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from illustrious.data.sources.shapes import (
    BACKGROUNDS,
    SHAPE_COLOURS,
    Layout,
    ShapesDataset,
    ShapeSpec,
    region,
)
from illustrious.eval.composition import (
    chance_scores,
    classify_shape,
    connected_components,
    judge,
    summarize,
    to_uint8,
)


def drawn(layout: Layout, shapes: dict[str, str] | None = None, size: int = 32, scale: float = 0.7) -> np.ndarray:
    """Draw `layout` by hand (no jitter, no anti-aliasing); `shapes` overrides what is drawn at a position."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[layout.background])
    pen = ImageDraw.Draw(image)
    for spec in layout.shapes:
        x0, y0, x1, y1 = region(spec.position, size, size)
        side = min(x1 - x0, y1 - y0) * scale
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2 - 1, cy + side / 2 - 1)
        kind = (shapes or {}).get(spec.position, spec.shape)
        colour = SHAPE_COLOURS[spec.colour]
        if kind == "circle":
            pen.ellipse(box, fill=colour)
        elif kind == "square":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return np.asarray(image)


def two(background="black", left=("red", "circle"), right=("blue", "square")) -> Layout:
    return Layout(background, (ShapeSpec(*left, "left"), ShapeSpec(*right, "right")))


@pytest.mark.parametrize("kind", ["circle", "square", "triangle"])
@pytest.mark.parametrize("size", [32, 64])
def test_a_drawn_shape_is_judged_as_drawn(kind, size):
    layout = Layout("grey", (ShapeSpec("green", kind, "center"),))
    scores = judge(drawn(layout, size=size)[None], [layout])
    assert scores["shape"].tolist() == [1.0] and scores["composition"].tolist() == [1.0]
    others = [k for k in ("circle", "square", "triangle") if k != kind]
    for other in others:
        wrong = Layout("grey", (ShapeSpec("green", other, "center"),))
        assert judge(drawn(layout, size=size)[None], [wrong])["shape"].tolist() == [0.0]


def test_exact_figures_on_hand_built_images():
    layout = two()
    right = drawn(layout)
    wrong_shape = drawn(layout, shapes={"right": "triangle"})           # blue triangle where a square was asked
    swapped = drawn(two(left=("blue", "circle"), right=("red", "square")))  # colours on the wrong sides
    white = drawn(two(background="white"))                               # wrong background
    blank = np.zeros((32, 32, 3), np.uint8)
    scores = judge(np.stack([right, wrong_shape, swapped, white, blank]), [layout] * 5)
    assert scores["composition"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert scores["shape"].tolist() == [1.0, 0.5, 1.0, 1.0, 0.0]
    assert scores["background"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert scores["cleanliness"].tolist() == [0.0] * 5
    assert scores["num_shapes"].tolist() == [2.0] * 5
    total = summarize(scores)
    assert total["composition"] == pytest.approx(6 / 10) and total["shape"] == pytest.approx(7 / 10)
    assert total["background"] == pytest.approx(4 / 5) and total["cleanliness"] == 0.0


def test_cleanliness_is_the_std_of_background_pixels_in_levels():
    layout = Layout("grey", (ShapeSpec("red", "square", "center"),))
    image = drawn(layout).astype(np.int16)
    rng = np.random.default_rng(0)
    noisy = (image + rng.choice([-10, 10], size=image.shape)).clip(0, 255).astype(np.uint8)
    score = judge(noisy[None], [layout])
    assert score["cleanliness"].item() == pytest.approx(10.0, abs=0.3)  # +-10 levels: std 10
    speckled = drawn(layout).copy()
    speckled[1, 1] = SHAPE_COLOURS["cyan"]  # a lone shape-coloured speckle counts as background noise
    background = ~np.all(speckled == SHAPE_COLOURS["red"], axis=-1)
    background[9:22, 9:22] = False  # the square (pixels 10-20) and its one-pixel ring
    expected = speckled[background].astype(float).std(0).mean()
    assert expected > 3 and judge(speckled[None], [layout])["cleanliness"].item() == pytest.approx(expected)


def test_pixels_in_minus_one_one_are_accepted():
    layout = two()
    pixels = torch.from_numpy(drawn(layout)).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert summarize(judge(pixels, [layout]))["shape"] == 1.0


def test_training_images_score_perfectly_and_mismatched_prompts_near_chance():
    ds = ShapesDataset(length=300, seed=11)
    items = [ds[i] for i in range(300)]
    images = to_uint8(np.stack([x["pixels"] for x in items]))
    layouts = [Layout.from_dict(x["layout"]) for x in items]
    scores = summarize(judge(images, layouts))
    assert scores["composition"] == 1.0 and scores["shape"] == 1.0 and scores["background"] == 1.0
    assert scores["cleanliness"] < 0.5  # a few anti-aliased pixels two away from an edge
    chance = chance_scores(images, layouts)
    # colour at position: 1/6 of shapes that land in an occupied region; a shape there has the asked
    # geometry 1/3 of the time; 3 backgrounds
    assert chance["composition"] < 0.25 and chance["shape"] < 0.4 and 0.2 < chance["background"] < 0.45


def test_classify_shape_and_components():
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True
    mask[5:7, 4:8] = True
    labels = connected_components(mask)
    assert labels.max() == 2 and (labels > 0).sum() == mask.sum()
    assert classify_shape(np.ones((5, 5), bool)) == "square"
    assert classify_shape(np.ones((1, 2), bool)) is None
    with pytest.raises(ValueError, match="2 images but 1 layouts"):
        judge(np.zeros((2, 8, 8, 3), np.uint8), [two()])
