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


def test_pairs_are_mentioned_left_or_top_first_unless_mixed_order():
    """The default data always names the left/top shape first, so a model can place pairs by the order of mention
    alone; `mixed_order` names either first (half the pairs each way) and leaves single shapes as they were."""
    fixed, mixed = ShapesDataset(length=400, seed=2), ShapesDataset(length=400, seed=2, mixed_order=True)
    orders = {"fixed": [], "mixed": []}
    for i in range(400):
        for name, ds in (("fixed", fixed), ("mixed", mixed)):
            shapes = ds.layout(i).shapes
            if len(shapes) == 2:
                orders[name].append(tuple(s.position for s in shapes))
        item = mixed[i]
        layout = Layout.from_dict(item["layout"])
        assert item["captions"] == {"tags": layout.tags(), "sentence": layout.sentence()}
    assert set(orders["fixed"]) == {("left", "right"), ("top", "bottom")}
    assert set(orders["mixed"]) == {("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")}
    reversed_share = sum(o in (("right", "left"), ("bottom", "top")) for o in orders["mixed"]) / len(orders["mixed"])
    assert 0.4 < reversed_share < 0.6
    # a reversed pair is drawn where its words say
    index = next(i for i in range(400) if mixed.layout(i).shapes[0].position in ("right", "bottom")
                 and len(mixed.layout(i).shapes) == 2)
    item = mixed[index]
    assert composition_accuracy(to_uint8(item["pixels"][None]), [Layout.from_dict(item["layout"])]) == 1.0
    # each sample has its own random stream: single shapes are the same layouts either way
    assert all(mixed.layout(i) == fixed.layout(i) for i in range(400) if len(fixed.layout(i).shapes) == 1)
