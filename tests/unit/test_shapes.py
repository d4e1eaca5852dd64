import numpy as np
import pytest

from illustrious.data.sources.shapes import (
    BACKGROUNDS,
    POSITIONS,
    SHAPE_COLOURS,
    SHAPES,
    Layout,
    ShapesDataset,
)
from illustrious.eval.composition import chance_accuracy, composition_accuracy, shapes_placed, to_uint8


def test_vocabulary_is_rich_enough():
    assert len(SHAPE_COLOURS) >= 6 and len(SHAPES) >= 3
    assert {"left", "right", "top", "bottom"} <= set(POSITIONS)
    assert {"black", "white"} <= set(BACKGROUNDS)


def test_deterministic_and_seeded():
    a, b, c = ShapesDataset(seed=3), ShapesDataset(seed=3), ShapesDataset(seed=4)
    np.testing.assert_array_equal(a[7]["pixels"], b[7]["pixels"])
    assert a[7]["captions"] == b[7]["captions"]
    assert any(a[i]["captions"] != c[i]["captions"] for i in range(5))


@pytest.mark.parametrize("width,height", [(32, 32), (64, 32), (24, 48), (128, 128)])
def test_any_resolution_and_aspect(width, height):
    item = ShapesDataset(width=width, height=height)[0]
    assert item["pixels"].shape == (3, height, width)
    assert item["pixels"].min() >= -1 and item["pixels"].max() <= 1
    assert item["original_size"] == (height, width) and item["target_size"] == (height, width)


def test_captions_describe_the_layout():
    ds = ShapesDataset(length=50)
    for i in range(50):
        item = ds[i]
        layout = Layout.from_dict(item["layout"])
        assert Layout.from_dict(layout.to_dict()) == layout
        tags, sentence = item["captions"]["tags"], item["captions"]["sentence"]
        assert "," in tags and sentence.endswith(".")
        for s in layout.shapes:
            assert f"{s.colour} {s.shape} {s.position}" in tags
            assert f"{s.colour} {s.shape}" in sentence and s.position in sentence
        assert f"{layout.background} background" in tags and layout.background in sentence


def test_judge_accepts_ground_truth_and_chance_is_low():
    ds = ShapesDataset(length=600, seed=11)
    items = [ds[i] for i in range(600)]
    images = to_uint8(np.stack([x["pixels"] for x in items]))
    layouts = [Layout.from_dict(x["layout"]) for x in items]
    assert composition_accuracy(images, layouts) == 1.0
    assert chance_accuracy(images, layouts) <= 0.2


def test_judge_rejects_wrong_colour_and_empty_images():
    ds = ShapesDataset(length=20, seed=5)
    item = ds[0]
    layout = Layout.from_dict(item["layout"])
    blank = np.zeros((32, 32, 3), np.uint8)
    assert not any(shapes_placed(blank, layout))
    image = to_uint8(item["pixels"][None])[0]
    swapped = Layout(layout.background, tuple(
        type(s)(next(c for c in SHAPE_COLOURS if c != s.colour), s.shape, s.position) for s in layout.shapes))
    assert not any(shapes_placed(image, swapped))
