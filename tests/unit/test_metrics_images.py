"""Pixel-statistic metrics against hand-computed numpy references; two batches accumulate to one batch of all."""

import random

import numpy as np
import pytest
import torch

from illustrious.data.captions.image_stats import image_statistics
from illustrious.data.sources.shapes import BACKGROUNDS, Layout, ShapeSpec, draw, random_layout
from illustrious.eval.composition import judge, summarize
from illustrious.eval.metrics import ColourStatistics, Luminance, ShapesJudge, parse_layout
from illustrious.eval.metrics.images import as_uint8


def random_images(n=6, h=20, w=24, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    images[0] //= 8  # a dark one
    images[1] = 255 - images[1] // 8  # a bright one
    return torch.from_numpy(images)


def in_two_batches(metric_cls, images, *extra):
    whole, split = metric_cls(), metric_cls()
    whole.update(images, *extra)
    k = len(images) // 2
    split.update(images[:k], *(e[:k] for e in extra))
    split.update(images[k:], *(e[k:] for e in extra))
    return whole.compute(), split.compute()


def test_float_pixels_are_read_as_the_png_writer_rounds_them():
    images = random_images()
    pixels = images.double() / 127.5 - 1
    assert torch.equal(as_uint8(pixels), images)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        as_uint8(images[0])


def test_luminance_against_numpy():
    images = random_images()
    x = images.numpy().astype(np.float64).transpose(0, 2, 3, 1) / 255
    y = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    means = y.mean(axis=(1, 2))
    ranges = np.array([np.percentile(v, 99) - np.percentile(v, 1) for v in y])
    whole, split = in_two_batches(Luminance, images)
    expected = {"mean": means.mean(), "darkest": means.min(), "brightest": means.max(), "dynamic_range": ranges.mean()}
    for key, value in expected.items():
        assert float(whole[key]) == pytest.approx(value, rel=1e-12), key
        assert float(split[key]) == pytest.approx(value, rel=1e-12), key
    # the same luma as the control tokens' brightness (0-255 there)
    assert 255 * means[2] == pytest.approx(image_statistics(images[2].permute(1, 2, 0).numpy())["brightness"], rel=1e-5)
    # float pixels in [-1, 1] give the same figures
    floats = Luminance()
    floats.update(images.float() / 127.5 - 1)
    assert float(floats.compute()["mean"]) == pytest.approx(means.mean(), rel=1e-12)


def hand_statistics(image):
    """The published formulas, written out again in numpy for one (H, W, 3) uint8 image."""
    x = image.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    hi, lo = x.max(-1), x.min(-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0) * 255
    rg, yb = r - g, (r + g) / 2 - b
    # Hasler & Suesstrunk (2003): sigma_rgyb + 0.3 mu_rgyb
    colourfulness = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return {"brightness": y.mean(), "contrast": y.std(), "sharpness": lap.var(), "colorfulness": colourfulness,
            "saturation": sat.mean(), "saturation_spread": sat.std()}


def test_colour_statistics_against_the_formulas():
    images = random_images()
    rows = [hand_statistics(image) for image in images.permute(0, 2, 3, 1).numpy()]
    whole, split = in_two_batches(ColourStatistics, images)
    for key in rows[0]:
        expected = np.mean([row[key] for row in rows])
        assert float(whole[key]) == pytest.approx(expected, rel=1e-4), key
        assert float(split[key]) == pytest.approx(float(whole[key]), rel=1e-12), key
    assert set(whole) == {"contrast", "brightness", "sharpness", "dynamic_colors", "colorfulness", "saturation",
                          "saturation_spread"}


def test_dynamic_colours_counts_hues_in_bits():
    half = np.zeros((1, 8, 8, 3), np.uint8)
    half[0, :, :4] = (255, 0, 0)  # red and blue, equally saturated, equal areas: one bit
    half[0, :, 4:] = (0, 0, 255)
    metric = ColourStatistics()
    metric.update(torch.from_numpy(half).permute(0, 3, 1, 2))
    assert float(metric.compute()["dynamic_colors"]) == pytest.approx(1.0)


def test_shapes_prompts_parse_back_to_their_layouts():
    rng = random.Random(0)
    for _ in range(300):
        layout = random_layout(rng)
        assert parse_layout(layout.sentence()) == layout
        assert parse_layout(layout.tags()) == layout
    assert parse_layout("1girl, solo, smile") is None
    assert parse_layout("A red circle on the left and a dog, on a black background.") is None


def test_shapes_judge_accumulates_to_summarize():
    rng = random.Random(3)
    layouts = [random_layout(rng) for _ in range(8)]
    images = np.stack([np.asarray(draw(layout, 32, 32, random.Random(i))) for i, layout in enumerate(layouts)])
    # a plain grey square with no shapes at all: nothing placed, the right background, perfectly clean
    layouts.append(Layout("grey", (ShapeSpec("red", "circle", "left"),)))
    images = np.concatenate([images, np.full((1, 32, 32, 3), BACKGROUNDS["grey"], np.uint8)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    prompts = [layout.sentence() for layout in layouts]
    whole, split = in_two_batches(ShapesJudge, batch, prompts)
    expected = summarize(judge(images, layouts))
    assert expected["composition"] > 0.8  # the renders follow their prompts
    for key, value in expected.items():
        assert float(whole[key]) == pytest.approx(value, abs=1e-12), key
        assert float(split[key]) == pytest.approx(value, abs=1e-12), key
    blank = ShapesJudge()
    blank.update(batch[-1:], layouts[-1:])
    assert {k: float(v) for k, v in blank.compute().items()} == {"composition": 0.0, "shape": 0.0, "background": 1.0,
                                                                  "cleanliness": 0.0}
    with pytest.raises(ValueError, match="Not a shapes prompt: '1girl'"):
        ShapesJudge().update(batch[:1], ["1girl"])


@pytest.mark.parametrize("metric_cls, extra", [(Luminance, ()), (ColourStatistics, ()), (ShapesJudge, ("prompts",))])
def test_merged_states_equal_one_metric_over_everything(metric_cls, extra):
    """What DDP's sync does: each state reduced with its own function (sum, min, max)."""
    rng = random.Random(5)
    layouts = [random_layout(rng) for _ in range(6)]
    images = torch.from_numpy(np.stack([np.asarray(draw(lay, 32, 32, random.Random(i)))
                                        for i, lay in enumerate(layouts)])).permute(0, 3, 1, 2)
    images[0] //= 4
    args = [[lay.sentence() for lay in layouts]] if extra else []
    whole, a, b = metric_cls(), metric_cls(), metric_cls()
    whole.update(images, *args)
    a.update(images[:2], *(x[:2] for x in args))
    b.update(images[2:], *(x[2:] for x in args))
    a.merge_state(b)
    for key, value in whole.compute().items():
        assert float(a.compute()[key]) == pytest.approx(float(value), rel=1e-12), key
