"""`python -m illustrious.evaluate`: two tiny trained runs -> the same prompts and seeds from each, the metrics
table (CSV + Markdown), the comparison grid, and crafted checkpoints refused before anything is generated."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from illustrious.errors import ConfigError
from tests.conftest import FAST, compose_config
from tests.integration.test_malicious_checkpoints import crafted

QUIET = ["callbacks.samples=null", "callbacks.progress=null", "callbacks.composition=null"]
PROMPTS = ["A red circle on the left, on a black background.", "blue square top, white background"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An eps run that recommends dpmpp_2m with 3 steps, and a flow run with the defaults (euler, 2 steps)."""
    from illustrious.train import train

    paths = {}
    for name, extra in {"eps": ["objective=eps", "sampling.sampler=dpmpp_2m", "sampling.steps=3"],
                        "flow": ["objective=flow"]}.items():
        out = tmp_path_factory.mktemp(name)
        train(compose_config([*FAST, *QUIET, "backbone=sdxl_tiny", *extra], out))
        paths[name] = out / "checkpoints" / "last.safetensors"
    return paths


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A prompt file, a folder of real shapes images, per-"character" reference folders, a tiny timm model."""
    import random

    import timm
    from safetensors.torch import save_file

    from illustrious.data.sources.shapes import Layout, ShapeSpec, draw, random_layout

    root = tmp_path_factory.mktemp("assets")
    (root / "prompts.txt").write_text("# two shapes prompts\n" + "\n".join(PROMPTS) + "\n", encoding="utf-8")
    (root / "real").mkdir()
    rng = random.Random(0)
    for i in range(6):
        draw(random_layout(rng), 32, 32, random.Random(i)).save(root / "real" / f"{i}.png")
    for colour, shape in (("red", "circle"), ("blue", "square")):  # "characters" named in the prompts
        (root / "characters" / colour).mkdir(parents=True)
        for i, position in enumerate(("left", "right")):
            layout = Layout("black", (ShapeSpec(colour, shape, position),))
            draw(layout, 32, 32, random.Random(i)).save(root / "characters" / colour / f"{i}.png")
    torch.manual_seed(0)
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(root / "timm.safetensors"))
    return root


def evaluate_config(*overrides, out_dir):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from illustrious.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[*overrides, f"out_dir={out_dir}"])


def model_metrics(assets):
    timm = ["feature_model.name=test_resnet", f"feature_model.weights={assets / 'timm.safetensors'}",
            "feature_model.image_size=64", f"reference_images={assets / 'real'}", "kid_subset_size=4", "kid_subsets=3"]
    ccip = ["ccip.model_name=test_resnet", f"ccip.weights={assets / 'timm.safetensors'}", "ccip.image_size=64",
            f"ccip.references={assets / 'characters'}"]
    return [*timm, *ccip]


def test_two_checkpoints_table_and_grid(runs, assets, tmp_path):
    from illustrious.eval.metrics import Luminance, ShapesJudge
    from illustrious.evaluate import evaluate
    from illustrious.sample import read_settings

    out = tmp_path / "eval"
    cfg = evaluate_config(f"checkpoints=[{runs['eps']},{runs['flow']}]", f"prompts={assets / 'prompts.txt'}",
                          "metrics=[shapes,luminance,colour,fid,kid,ccip]", "num_images=2", "seed=5",
                          *model_metrics(assets), out_dir=out)
    result = evaluate(cfg)
    rows = result["rows"]
    labels = [f"{runs[name].parents[1].name}/checkpoints/last" for name in ("eps", "flow")]  # shortest distinct tails
    assert [r["checkpoint"] for r in rows] == labels
    # each checkpoint samples as its run recommends
    assert [(r["sampler"], r["steps"]) for r in rows] == [("dpmpp_2m", 3), ("euler", 2)]

    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["checkpoint"] for t in table] == labels
    for column in ("shapes/composition", "shapes/cleanliness", "luminance/mean", "luminance/dynamic_range",
                   "colour/colorfulness", "colour/sharpness", "fid", "kid", "kid_std", "ccip/mean", "ccip/red/max",
                   "ccip/blue/images"):
        assert column in table[0], column
    assert table[0]["ccip/red/images"] == "2" and table[0]["ccip/blue/images"] == "2"
    markdown = (out / "metrics.md").read_text().splitlines()
    assert markdown[0].startswith("| checkpoint | path | sampler | steps |") and len(markdown) == 4
    assert markdown[2].startswith(f"| {labels[0]} |")

    for index, row in enumerate(rows):
        folder = out / "images" / f"{index:02d}-{row['checkpoint'].replace('/', '_')}"
        pngs = sorted(folder.glob("*.png"))
        assert [p.name for p in pngs] == ["00000-5.png", "00001-6.png", "00002-7.png", "00003-8.png"]
        meta = [read_settings(p) for p in pngs]
        assert [m["prompt"] for m in meta] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
        assert meta[0]["sampler"] == row["sampler"] and meta[0]["checkpoint"] == str(runs[["eps", "flow"][index]])
        # the table's figures are those of the written images (PNG = the rounded pixels the metrics saw)
        images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])).permute(0, 3, 1, 2)
        luminance, shapes = Luminance(), ShapesJudge()
        luminance.update(images)
        shapes.update(images, [m["prompt"] for m in meta])
        assert row["luminance/mean"] == pytest.approx(float(luminance.compute()["mean"]), rel=1e-12)
        assert row["shapes/cleanliness"] == pytest.approx(float(shapes.compute()["cleanliness"]), rel=1e-12)
    eps_first, flow_first = (np.asarray(Image.open(next((out / "images").glob(f"{i:02d}-*/00000-5.png"))))
                             for i in (0, 1))
    assert np.abs(eps_first.astype(int) - flow_first.astype(int)).mean() > 1  # two models, two images

    grid = Image.open(out / "grid.png")
    assert grid.size[0] == 2 * 128 and grid.size[1] == 4 * (128 + 4 * 11 + 4)  # 2 columns, 4 rows
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["prompts"] == PROMPTS and saved["rows"][1]["checkpoint"] == labels[1]


def test_overrides_apply_to_every_checkpoint(runs, assets, tmp_path):
    from illustrious.evaluate import evaluate

    cfg = evaluate_config(f"checkpoints=[{runs['eps']},{runs['flow']}]", f"prompts={assets / 'prompts.txt'}",
                          "labels=[eps,flow]", "sampler=ddim", "steps=2", "cfg=1", "metrics=[luminance]",
                          out_dir=tmp_path / "eval")
    rows = evaluate(cfg)["rows"]
    assert [(r["checkpoint"], r["sampler"], r["steps"], r["cfg"]) for r in rows] == [("eps", "ddim", 2, 1.0),
                                                                                     ("flow", "ddim", 2, 1.0)]
    assert (tmp_path / "eval" / "images" / "01-flow" / "00001-1.png").is_file()


@pytest.mark.parametrize("overrides, message", [
    (["metrics=[luminance,sharpness]"], r"metrics=\['luminance', 'sharpness'\]: each once, from shapes, luminance"),
    (["metrics=[fid]"], r"metrics=fid needs feature_model.name, e.g. feature_model.name=inception_v3"),
    (["MODELS", "metrics=[kid]", "kid_subset_size=50"], r"kid_subset_size=50: must be at most the number of generated images "
                                              r"per checkpoint \(2\) and of reference images \(6\)"),
    (["MODELS", "metrics=[fid]", "feature_model.name=inceptionv3"], r"feature_model.name='inceptionv3' is not a timm model"),
    (["sampler=heun"], r"sampler='heun': needs one of"),
    (["steps=0", "cfg=-1"], r"These settings are not valid:\n  steps=0.*\n  cfg=-1"),
    (["labels=[a]"], r"labels=\['a'\]: give 2 distinct names"),
    (["prompts=/nonexistent.txt"], r"prompts='/nonexistent.txt' does not exist"),
])
def test_settings_checked_before_any_checkpoint_loads(runs, assets, tmp_path, overrides, message):
    from illustrious.evaluate import evaluate

    base = [f"checkpoints=[{runs['eps']},{runs['flow']}]", f"prompts={assets / 'prompts.txt'}"]
    overrides = [o for override in overrides for o in (model_metrics(assets) if override == "MODELS" else [override])]
    with pytest.raises(ConfigError, match=message):
        evaluate(evaluate_config(*base, *overrides, out_dir=tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()


def test_shapes_metric_needs_shapes_prompts(runs, tmp_path):
    from illustrious.evaluate import evaluate

    prompts = tmp_path / "p.txt"
    prompts.write_text("1girl, solo\n")
    with pytest.raises(ConfigError, match=r"metrics=shapes needs shapes prompts .* e.g. '1girl, solo'"):
        evaluate(evaluate_config(f"checkpoints=[{runs['eps']}]", f"prompts={prompts}", "metrics=[shapes]",
                                 out_dir=tmp_path / "eval"))


def test_smuggled_target_is_ignored_and_our_class_is_built(runs, assets, tmp_path):
    from illustrious.evaluate import evaluate

    marker = tmp_path / "marker"
    path = crafted(runs["flow"], tmp_path, marker, legacy=False)
    rows = evaluate(evaluate_config(f"checkpoints=[{path}]", f"prompts={assets / 'prompts.txt'}", "metrics=[luminance]",
                                    out_dir=tmp_path / "eval"))["rows"]
    assert rows[0]["checkpoint"] == "smuggled" and not marker.exists()


def test_command_line_and_a_crafted_checkpoint(runs, assets, tmp_path):
    """The command writes its table; a stored config naming a foreign target stops it before any image."""
    marker = tmp_path / "marker"
    evil = crafted(runs["flow"], tmp_path, marker, legacy=True)
    command = [sys.executable, "-m", "illustrious.evaluate", f"prompts={assets / 'prompts.txt'}", "steps=2"]
    proc = subprocess.run([*command, f"checkpoints=[{runs['eps']},{evil}]", f"out_dir={tmp_path / 'bad'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Configuration error:" in proc.stderr and "none of our 'backbone' options" in proc.stderr
    assert not marker.exists() and not (tmp_path / "bad" / "images").exists()

    proc = subprocess.run([*command, f"checkpoints=[{runs['eps']}]", f"out_dir={tmp_path / 'ok'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ok" / "metrics.md").read_text().count("\n") == 3
    assert (tmp_path / "ok" / "grid.png").is_file()


def test_truncated_checkpoint_is_named(tmp_path):
    from illustrious.evaluate import evaluate

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle on the left, on a black background.\n")
    with pytest.raises(ConfigError, match=r"checkpoints: .*broken.safetensors cannot be read: .* is truncated"):
        evaluate(evaluate_config(f"checkpoints=[{broken}]", f"prompts={prompts}", out_dir=tmp_path / "eval"))
