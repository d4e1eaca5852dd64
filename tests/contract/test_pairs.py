"""Every backbone x objective pair trains under the one trainer, checkpoints, resumes and samples."""

import math

import pytest
import torch

from illustrious.checkpoint_io import load_checkpoint_file
from illustrious.train import train

BACKBONES = ["sdxl_tiny", "lumina_tiny"]
OBJECTIVES = ["eps", "vpred", "flow"]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_pair_trains(backbone, objective, make_config, tmp_path):
    cfg = make_config(f"backbone={backbone}", f"objective={objective}", "trainer.max_steps=3")
    metrics, objects = train(cfg)
    assert metrics["global_step"] == 3
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/grad_norm"])
    assert 0.0 <= metrics["eval/composition_accuracy"] <= 1.0
    assert (tmp_path / "checkpoints" / "last.safetensors").is_file()
    assert list((tmp_path / "samples").glob("final_step_000003.png"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "metrics.json").is_file()


def test_training_changes_the_denoiser_and_text_encoders(make_config):
    cfg = make_config("trainer.max_steps=2")
    _, objects = train(cfg)
    module = objects["module"]
    ckpt = load_checkpoint_file(cfg.output_dir + "/checkpoints/last.safetensors")
    names = [g["name"] for g in ckpt["optimizer_states"][0]["param_groups"]]
    assert names[0] == "denoiser" and names[1:] in (["text_encoder_1", "text_encoder_2"], ["text_encoder"])
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())
    assert ckpt["illustrious_run"]["choices"]["backbone"] in ("sdxl_tiny", "lumina_tiny")


def test_frozen_text_encoders_do_not_change(make_config):
    cfg = make_config("backbone=sdxl_tiny", "optim.text_encoder_lr=0")
    torch.manual_seed(0)
    from hydra.utils import instantiate

    before = {k: v.clone() for k, v in instantiate(cfg.backbone).text_encoders.state_dict().items()}
    _, objects = train(cfg)
    after = objects["module"].backbone.text_encoders.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_interrupted_run_resumes_from_last_checkpoint(make_config, tmp_path):
    first, _ = train(make_config("trainer.max_steps=2"))
    assert first["global_step"] == 2
    resumed, objects = train(make_config("trainer.max_steps=4"))
    assert resumed["global_step"] == 4
    # the LR schedule continued rather than restarting: 4 steps were scheduled in total
    assert objects["trainer"].lr_scheduler_configs[0].scheduler.last_epoch == 4


def test_bad_config_stops_before_building(make_config):
    from illustrious.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.lr"):
        train(make_config("optim.lr=0", "optim.text_encoder_lr=0"))
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        train(make_config("trainer.max_steps=0"))
    with pytest.raises(Exception, match="precision"):
        train(make_config("trainer.precision=bf17"))


def test_data_size_must_fit_the_backbone(make_config):
    with pytest.raises(ValueError, match="multiples of 4"):
        train(make_config("backbone=lumina_tiny", "data.width=30"))
