"""`python -m illustrious.sample`: a checkpoint alone -> PNGs with their settings, reproducible from them."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST, compose_config

PROMPT = "A red circle on the left, on a black background."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from illustrious.train import train

    out = tmp_path_factory.mktemp("run")
    train(compose_config([*FAST, "objective=vpred", "sampling.guidance_rescale=0.7", "callbacks.samples=null", "callbacks.progress=null",
                          "callbacks.composition=null"], out))
    return out / "checkpoints" / "last.safetensors"


def sample_config(*overrides, out_dir):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from illustrious.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="sample", overrides=[*overrides, f"out_dir={out_dir}"])


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_settings_round_trip_through_png_metadata(checkpoint, tmp_path):
    from illustrious.sample import read_settings, sample

    cfg = sample_config(f"checkpoint={checkpoint}", f"prompt=[{PROMPT!r}, 'A blue square on the top, on a white background.']",
                        "num_images=2", "sampler=dpmpp_2m", "steps=3", "cfg=5", "seed=7", out_dir=tmp_path)
    paths = sample(cfg)
    assert [p.name for p in paths] == ["00000-7.png", "00001-8.png", "00002-9.png", "00003-10.png"]
    meta = read_settings(paths[3])
    assert meta["prompt"] == "A blue square on the top, on a white background."
    assert (meta["sampler"], meta["steps"], meta["guidance_scale"], meta["seed"]) == ("dpmpp_2m", 3, 5, 10)
    assert meta["guidance_rescale"] == 0.7  # not given: from the checkpoint's sampling block
    assert (meta["height"], meta["width"]) == (32, 32) and meta["checkpoint"] == str(checkpoint)
    assert meta["objective"].endswith("VPredictionObjective")
    text = Image.open(paths[3]).text["parameters"]
    assert text.startswith("A blue square on the top") and "Sampler: dpmpp_2m" in text and "Seed: 10" in text

    # the metadata alone regenerates an image, and earlier files are not overwritten
    again = sample(sample_config(f"checkpoint={checkpoint}", f"prompt={meta['prompt']!r}", f"seed={meta['seed']}",
                                 f"sampler={meta['sampler']}", f"steps={meta['steps']}", f"cfg={meta['guidance_scale']}",
                                 out_dir=tmp_path))
    assert again[0].name == "00004-10.png"
    # same pixels up to float rounding: CPU kernels may sum in a different order for a batch of 1 than of 4
    regenerated, original = pixels(again[0]).astype(int), pixels(paths[3]).astype(int)
    difference = np.abs(regenerated - original)
    print("regenerated vs original: max", difference.max(), "mean", difference.mean())
    assert difference.max() <= 8 and difference.mean() < 1
    assert np.abs(pixels(paths[2]).astype(int) - original).mean() > 10  # another seed really differs


def test_img2img_and_diagnostics(checkpoint, tmp_path):
    from illustrious.sample import read_settings, sample

    init = tmp_path / "init.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(init)
    paths = sample(sample_config(f"checkpoint={checkpoint}", f"prompt={PROMPT!r}", "steps=4", f"init_image={init}",
                                 "strength=0.5", "diagnostics=true", out_dir=tmp_path / "out"))
    meta = read_settings(paths[0])
    assert meta["strength"] == 0.5 and meta["init_image"] == str(init)
    trajectory = json.loads(paths[0].with_name(paths[0].stem + "_trajectory.json").read_text())
    assert len(trajectory["t"]) == 2  # int(4 * 0.5) steps from the noised init image
    assert len(trajectory["mean_colour"]) == 2 and len(trajectory["mean_colour"][0]) == 3
    assert Image.open(paths[0].with_name(paths[0].stem + "_trajectory.png")).size[0] > 100


def test_command_line(checkpoint, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "illustrious.sample", f"checkpoint={checkpoint}", f"prompt={PROMPT}",
                           "sampler=dpmpp_2m", "steps=3", "cfg=5", f"out_dir={out}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (png,) = out.glob("*.png")
    assert json.loads(Image.open(png).text["illustrious"])["guidance_scale"] == 5


def test_missing_or_wrong_checkpoint_is_named(tmp_path):
    from illustrious.errors import ConfigError
    from illustrious.sample import sample

    with pytest.raises(ConfigError) as error:
        sample(sample_config(f"prompt={PROMPT!r}", out_dir=tmp_path))
    assert str(error.value) == "checkpoint is required: a string, e.g. checkpoint=outputs/run/checkpoints/last.safetensors"
    with pytest.raises(ConfigError) as error:
        sample(sample_config(f"checkpoint={tmp_path / 'nope.safetensors'}", f"prompt={PROMPT!r}", out_dir=tmp_path))
    assert str(error.value) == (f"checkpoint='{tmp_path / 'nope.safetensors'}' does not exist: give a training "
                                "checkpoint, e.g. checkpoint=outputs/<date>/<time>/checkpoints/last.safetensors")


def test_prompt_file_one_prompt_per_line(checkpoint, tmp_path):
    from illustrious.sample import read_prompt_file, read_settings, sample

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# shapes to draw\n{PROMPT}\n\n   \n  1girl, solo, black background  \n#skip me\n",
                       encoding="utf-8")
    assert read_prompt_file(str(prompts)) == [PROMPT, "1girl, solo, black background"]
    paths = sample(sample_config(f"checkpoint={checkpoint}", f"prompt_file={prompts}", "prompt='a first one'",
                                 "steps=2", "num_images=2", "seed=3", out_dir=tmp_path / "out"))
    assert [read_settings(p)["prompt"] for p in paths] == ["a first one"] * 2 + [PROMPT] * 2 + [
        "1girl, solo, black background"] * 2
    assert [read_settings(p)["seed"] for p in paths] == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(("overrides", "message"), [
    (["width=0"], "width=0: needs a whole number (int) >= 1 (or null), e.g. width=1024"),
    (["height=-32"], "height=-32: needs a whole number (int) >= 1 (or null), e.g. height=1024"),
    (["steps=0"], "steps=0: needs a whole number (int) >= 1 (or null), e.g. steps=28"),
    (["num_images=0"], "num_images=0: needs a whole number (int) >= 1, e.g. num_images=4"),
    (["sampler=bogus"], "sampler='bogus': needs one of ddim, dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral (or null), e.g. sampler=dpmpp_2m"),
    (["prompt=null"], 'Nothing to sample: set prompt="..." or prompt_file=prompts.txt (one prompt per line).'),
    (["prompt_file=missing.txt"],
     "prompt_file='missing.txt' does not exist: give a text file with one prompt per line."),
])
def test_bad_settings_stop_before_the_model_loads(overrides, message, checkpoint, tmp_path, monkeypatch):
    import illustrious.sample as sample_module
    from illustrious.errors import ConfigError

    monkeypatch.setattr(sample_module, "load_module", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError) as error:
        sample_module.sample(sample_config(f"checkpoint={checkpoint}", f"prompt={PROMPT!r}", *overrides,
                                           out_dir=tmp_path))
    assert str(error.value) == message


def test_size_must_fit_the_backbone(checkpoint, tmp_path):
    from illustrious.errors import ConfigError
    from illustrious.sample import load_module, sample

    multiple = load_module(str(checkpoint))[0].backbone.pixel_multiple
    assert multiple > 1
    with pytest.raises(ConfigError) as error:
        sample(sample_config(f"checkpoint={checkpoint}", f"prompt={PROMPT!r}", f"width={multiple + 1}",
                             out_dir=tmp_path))
    assert str(error.value) == (f"width={multiple + 1}: must be a multiple of {multiple} for this backbone, "
                                f"e.g. width={multiple}")


def test_command_line_rejects_bad_sizes_with_one_message(checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "illustrious.sample", f"checkpoint={checkpoint}", f"prompt={PROMPT}",
                           "width=0", f"out_dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Configuration error: width=0: needs a whole number (int) >= 1 (or null), e.g. width=1024" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("prompt", ["1girl, solo, black background", "it's a \\ backslash, and a quote\\'", "x\\"])
def test_prompts_with_commas_and_quotes_reach_hydra_as_one_string(prompt):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from illustrious.sample import quote_text_overrides

    (arg,) = quote_text_overrides([f"prompt={prompt}"])
    assert OverridesParser.create().parse_override(arg).value() == prompt
    assert quote_text_overrides(["prompt=[a, b]", "steps=3"]) == ["prompt=[a, b]", "steps=3"]
