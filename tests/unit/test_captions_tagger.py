"""The auto-tagger: a small random timm model saved in the WD-tagger layout, loaded back and run on a folder."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from illustrious.data.captions.tagger import Tagger
from illustrious.errors import ConfigError

LABELS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9), ("1girl", 0), ("long_hair", 0),
          ("smile", 0), ("hatsune_miku", 4), ("hakurei_reimu", 4)]


@pytest.fixture(scope="module")
def tagger_folder(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tagger")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=len(LABELS), img_size=32)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    with (folder / "selected_tags.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(LABELS):
            writer.writerow([i, name, cat, 100])
    (folder / "config.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": len(LABELS),
                                                    "pretrained_cfg": {"input_size": [3, 32, 32]}}))
    return folder


def make_tagger(folder, **kw):
    return Tagger(folder, "test_vit", image_size=32, model_args={"img_size": 32}, **kw)


def test_preprocess_wd_layout(tagger_folder):
    tagger = make_tagger(tagger_folder)
    image = Image.new("RGBA", (40, 20), (255, 0, 0, 255))  # wide: padded to a white square
    x = tagger.preprocess(image)
    assert x.shape == (3, 32, 32)
    # BGR: channel 2 is red; the padding above and below is white (1, 1, 1)
    assert torch.allclose(x[:, 0, 16], torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(x[:, 16, 16], torch.tensor([-1.0, -1.0, 1.0]))


def test_tags_follow_thresholds_and_categories(tagger_folder):
    tagger = make_tagger(tagger_folder, general_threshold=0.5, character_threshold=0.5)
    probs = np.array([0.1, 0.7, 0.2, 0.3, 0.9, 0.4, 0.6, 0.55, 0.2])
    out = tagger.tags(probs)
    assert out == {"tags": {"general": ["1girl", "smile"], "character": ["hatsune_miku"]}, "rating": "sensitive"}
    real = tagger.probabilities(torch.stack([tagger.preprocess(Image.new("RGB", (32, 32), (9, 99, 199)))]))
    assert real.shape == (1, len(LABELS)) and ((real > 0) & (real < 1)).all()


def test_bad_folders_are_named(tagger_folder, tmp_path):
    with pytest.raises(ConfigError, match="model.safetensors"):
        make_tagger(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((tagger_folder / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="selected_tags.csv"):
        make_tagger(tmp_path)
    with pytest.raises(ConfigError, match="image_size"):
        Tagger(tagger_folder, "test_vit", image_size=64, model_args={"img_size": 64})
