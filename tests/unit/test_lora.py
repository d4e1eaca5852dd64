"""LoRA in training: only adapters train, files are written, training continues from them, merging is exact."""

import pytest
import torch

from illustrious.config import instantiate
from illustrious.train import build_module, train
from illustrious.weights.lora import LoraSettings, apply_lora, export_paths, merge_lora
from illustrious.weights.lora.adapters import adapted_layers, factors
from tests.unit.test_lora_formats import randomize

QUIET = ["callbacks.samples=null", "callbacks.composition=null", "callbacks.checkpoint=null"]


def test_only_adapters_train_and_files_are_written(make_config, tmp_path):
    cfg = make_config("backbone=sdxl_tiny", "lora=lora", "lora.rank=4", "lora.text_encoders=[text_encoder_1]", "optim.lr=1e-2", *QUIET)
    torch.manual_seed(cfg.seed)
    before = {k: v.clone() for k, v in build_module(cfg).state_dict().items()}
    _, objects = train(cfg)
    after = objects["module"].state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(".lora_" in k for k in moved)  # base weights are bit-identical
    assert any(k.startswith("backbone.denoiser.") for k in moved)
    assert any(k.startswith("backbone.text_encoders.clip_l.") for k in moved)
    assert not any(k.startswith("backbone.text_encoders.clip_g.") for k in moved)  # no adapters there: frozen
    groups = {g["name"] for g in objects["trainer"].optimizers[0].param_groups}
    assert groups == {"denoiser", "text_encoder_1"}
    paths = export_paths(tmp_path)
    assert paths["comfyui"].is_file() and paths["diffusers"].is_file()

    # continue: a new run starts from the saved adapters
    again = make_config("backbone=sdxl_tiny", "lora=lora", "lora.rank=4", "lora.text_encoders=[text_encoder_1]",
                        f"lora.weights={paths['comfyui']}", *QUIET, output_dir=tmp_path / "continued")
    module = build_module(again)
    state = module.state_dict()
    for k in moved:
        torch.testing.assert_close(state[k], after[k], rtol=1e-6, atol=1e-7)
    metrics, _ = train(again)
    assert metrics["global_step"] == 2


@pytest.mark.parametrize("method", ["lora", "loha", "lokr"])
def test_merge_is_base_plus_scaled_delta(make_config, method):
    """W' = W + (alpha / r) * delta with delta = B A (LoRA), (w1a w1b) * (w2a w2b) (LoHa),
    kron(w1, w2a w2b) (LoKr), the published forms; the merged model computes what the adapted one did."""
    backbone = instantiate(make_config("backbone=sdxl_tiny").backbone)
    apply_lora(backbone, LoraSettings(method=method, rank=4, alpha=3.0, text_encoders=["text_encoders"]))
    randomize(backbone)
    scale = 3.0 / 4
    expected = {}
    for group, path, layer in adapted_layers(backbone):
        f = {k: v.detach().clone() for k, v in factors(layer).items()}
        base = layer.get_base_layer().weight.detach().clone()
        if method == "lora":
            delta = f["lora_B"] @ f["lora_A"]
        elif method == "loha":
            delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        else:
            w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
            w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
            delta = torch.kron(w1, w2)
        expected[(group, path)] = base + scale * delta.reshape(base.shape)

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, backbone.latent_channels, 16, 16, generator=gen)
    with torch.no_grad():
        cond = backbone.encode_text(["a red circle", "two blue squares"])
        adapted = backbone(x, torch.tensor([0.3, 0.6]), cond)
    merge_lora(backbone)
    parts = backbone.components()
    for (group, path), weight in expected.items():
        model = getattr(parts[group], "model", parts[group])
        torch.testing.assert_close(model.get_submodule(path).weight, weight, rtol=1e-5, atol=1e-6)
    assert not list(adapted_layers(backbone)) and not backbone.adapter_prefixes
    assert not any("lora_" in k or "hada_" in k or "lokr_" in k for k in backbone.state_dict())
    with torch.no_grad():
        merged = backbone(x, torch.tensor([0.3, 0.6]), backbone.encode_text(["a red circle", "two blue squares"]))
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_unknown_lora_component_is_named(make_config):
    from illustrious.errors import ConfigError

    with pytest.raises(ConfigError, match="text_encoder_3"):
        build_module(make_config("backbone=sdxl_tiny", "lora=lora", "lora.text_encoders=[text_encoder_3]"))


def test_a_format_that_cannot_hold_the_adapters_fails_before_training(make_config):
    from illustrious.errors import ConfigError

    with pytest.raises(ConfigError, match="ComfyUI's Lumina-2 LoRA layout holds the denoiser only"):
        build_module(make_config("backbone=lumina_tiny", "lora=lora", "lora.text_encoders=[text_encoder]"))
    build_module(make_config("backbone=lumina_tiny", "lora=lora", "lora.text_encoders=[text_encoder]", "lora.save=[]"))
