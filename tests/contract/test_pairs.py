"""Every backbone x objective pair trains under the one trainer, checkpoints, resumes and samples."""

import math

import lightning as L
import pytest
import torch

from illustrious.checkpoint_io import load_checkpoint_file
from illustrious.train import train

BACKBONES = ["sdxl_tiny", "lumina_tiny"]
OBJECTIVES = ["eps", "vpred", "flow", "flow_x0"]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_pair_trains(backbone, objective, make_config, tmp_path):
    cfg = make_config(f"backbone={backbone}", f"objective={objective}", "trainer.max_steps=3")
    metrics, objects = train(cfg)
    assert metrics["global_step"] == 3
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/grad_norm"])
    assert metrics["eval/composition_accuracy"] == pytest.approx(judged_accuracy(cfg, objects), abs=1e-7)
    assert (tmp_path / "checkpoints" / "last.safetensors").is_file()
    assert list((tmp_path / "samples").glob("final_step_000003.png"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "metrics.json").is_file()


def judged_accuracy(cfg, objects) -> float:
    """The reference for the logged metric: the held-out prompts sampled again through the public generate()
    with the run's sampling settings and the callback's seed, judged shape by shape."""
    from illustrious.callbacks.composition import CompositionEval
    from illustrious.eval.composition import shapes_placed, to_uint8
    from illustrious.sampling.generate import generate

    module, datamodule = objects["module"], objects["datamodule"]
    (callback,) = [c for c in objects["trainer"].callbacks if isinstance(c, CompositionEval)]
    layouts = datamodule.eval_layouts(cfg.callbacks.composition.num_samples)
    height, width = datamodule.image_size
    pixels = generate(module.backbone, module.objective, [layout.sentence() for layout in layouts], height=height,
                      width=width, seed=callback.seed, **cfg.sampling)
    hits = [ok for image, layout in zip(to_uint8(pixels), layouts, strict=True) for ok in shapes_placed(image, layout)]
    assert len(hits) >= len(layouts)  # every layout prompts at least one shape
    return sum(hits) / len(hits)


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


class InitialWeights(L.Callback):
    """The backbone's weights as training starts (after the checkpoint, if any, is restored)."""

    def on_train_start(self, trainer, module):
        self.state = {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}


def train_with(cfg, monkeypatch, callback):
    import illustrious.train as train_module

    build_trainer = train_module.build_trainer

    def with_callback(cfg):
        trainer = build_trainer(cfg)
        trainer.callbacks.append(callback)
        return trainer

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "build_trainer", with_callback)
        return train_module.train(cfg)


def component_keys(backbone, name) -> set[str]:
    """state_dict keys (of the backbone) of one learning-rate group; `text_encoders` = every text-encoder group."""
    groups = [g for g in backbone.components() if g != "denoiser"] if name == "text_encoders" else [name]
    params = {id(p) for g in groups for p in backbone.components()[g].parameters()}
    return {k for k, p in backbone.named_parameters() if id(p) in params}


def test_frozen_text_encoders_do_not_change_while_the_denoiser_trains(make_config, monkeypatch):
    cfg = make_config("backbone=sdxl_tiny", "optim.text_encoder_lr=0")
    initial = InitialWeights()
    _, objects = train_with(cfg, monkeypatch, initial)
    backbone = objects["module"].backbone
    after = backbone.state_dict()
    frozen, trained = component_keys(backbone, "text_encoders"), component_keys(backbone, "denoiser")
    assert frozen and trained and not frozen & trained
    assert [k for k in frozen if not torch.equal(after[k], initial.state[k])] == []
    assert not any(p.requires_grad for g, m in backbone.components().items() if g != "denoiser"
                   for p in m.parameters())
    # the denoiser did train: every one of its parameters moved (AdamW moves each one with a gradient)
    assert [k for k in trained if torch.equal(after[k], initial.state[k])] == []
    (group,) = objects["trainer"].optimizers[0].param_groups
    assert group["name"] == "denoiser" and {id(p) for p in group["params"]} == {
        id(p) for p in backbone.components()["denoiser"].parameters()}


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
    with pytest.raises(ConfigError, match=r"^trainer.precision='bf17': needs one of .*bf16-mixed.*, "
                       r"e.g. trainer.precision=bf16-mixed$"):
        train(make_config("trainer.precision=bf17"))


def test_data_size_must_fit_the_backbone(make_config):
    with pytest.raises(ValueError, match="multiples of 4"):
        train(make_config("backbone=lumina_tiny", "data.width=30"))
