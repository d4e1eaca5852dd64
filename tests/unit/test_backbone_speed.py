"""Speed levers as config options (illustrious/backbones/speed.py): validated names, selective checkpointing per
block, regional compilation, channels-last, and the attention kernel kept in checkpoint recomputation."""

import pytest
import torch

from illustrious.backbones import speed
from illustrious.config import instantiate, validate
from illustrious.errors import ConfigError

PROMPTS = ["a red circle on the left", "a blue square"]


def train_once(backbone):
    torch.manual_seed(0)
    x, t = torch.randn(2, backbone.latent_channels, 16, 16), torch.tensor([0.3, 0.7])
    out = backbone(x, t, backbone.encode_text(PROMPTS))
    out.float().pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("key", "value", "needs"), [
    ("backbone.attention", "fast", "one of auto, flash, efficient, cudnn, math"),
    ("backbone.checkpoint_blocks", "1.5", "<= 1"),
    ("backbone.compile", "full", "one of none, regional"),
    ("backbone.channels_last", "yes", "true or false"),
    ("optim.optimizer.fused", "1", "true or false"),
])
def test_lever_settings_are_validated(make_config, key, value, needs):
    with pytest.raises(ConfigError, match=f"{key}=.*needs .*{needs}"):
        validate(make_config("backbone=sdxl_tiny", f"{key}={value}"))


def test_selected_blocks_spread_evenly():
    assert speed.selected(6, 0.5) == [1, 3, 5]
    assert speed.selected(4, 1.0) == [0, 1, 2, 3] and speed.selected(4, 0) == []
    assert speed.selected(26, 0.25) == [3, 7, 11, 15, 19, 23]  # floor(6.5) blocks, evenly spread
    with pytest.raises(ConfigError, match="checkpoint_blocks"):
        speed.selected(4, 2)


@pytest.mark.parametrize("name", ["sdxl_tiny", "lumina_tiny"])
def test_selective_checkpointing_and_kernel_choice_leave_the_math_unchanged(make_config, name):
    torch.manual_seed(0)
    plain = instantiate(make_config(f"backbone={name}").backbone)
    torch.manual_seed(0)
    levers = instantiate(make_config(f"backbone={name}", "backbone.checkpoint_blocks=0.5",
                                     "backbone.attention=math").backbone)
    blocks = speed.denoiser_blocks(levers)
    assert levers.checkpointed_blocks == len(blocks) // 2 > 0
    wrapped = [m for m in levers.denoiser.modules() if type(m).__name__ == "CheckpointWrapper"]
    assert len(wrapped) == levers.checkpointed_blocks
    assert levers.denoiser.state_dict().keys() == plain.denoiser.state_dict().keys()  # files unchanged
    out_a, grads_a = train_once(plain)
    out_b, grads_b = train_once(levers)
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == {k.replace("_checkpoint_wrapped_module.", "") for k in grads_b}
    for k, g in grads_b.items():
        torch.testing.assert_close(g, grads_a[k.replace("_checkpoint_wrapped_module.", "")], rtol=1e-3, atol=1e-5)


def test_both_checkpointing_switches_are_refused(make_config):
    from illustrious.train import build_module

    cfg = make_config("backbone=sdxl_tiny", "backbone.checkpoint_blocks=1", "gradient_checkpointing=[denoiser]")
    with pytest.raises(ConfigError, match="checkpoint_blocks both"):
        build_module(cfg)


def test_full_checkpointing_recomputes_under_the_chosen_kernel(make_config):
    """diffusers' checkpointing gets our function, which re-enters the attention kernel in the recomputation."""
    from illustrious.train import build_module

    module = build_module(make_config("backbone=lumina_tiny", "backbone.attention=math",
                                      "gradient_checkpointing=[denoiser]"))
    dit = module.backbone.denoiser
    assert dit.gradient_checkpointing
    seen = []
    real = speed.attention_context

    def spy(name):
        seen.append(name)
        return real(name)

    speed.attention_context, saved = spy, speed.attention_context
    try:
        train_once(module.backbone)
    finally:
        speed.attention_context = saved
    assert seen.count("math") >= 3  # the forward, then each checkpointed layer's recomputation (forward + ctx)


def test_regional_compile_compiles_each_block_and_keeps_results(make_config):
    torch.manual_seed(0)
    plain = instantiate(make_config("backbone=sdxl_tiny").backbone)
    torch.manual_seed(0)
    compiled = instantiate(make_config("backbone=sdxl_tiny").backbone)
    blocks = speed.compile_regions(compiled, backend="eager")  # the inductor backend needs minutes on this CPU
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert not any(m._compiled_call_impl is not None for m in compiled.denoiser.modules() if m not in blocks)
    out_a, _ = train_once(plain)
    out_b, _ = train_once(compiled)
    torch.testing.assert_close(out_b, out_a)
    assert compiled.denoiser.state_dict().keys() == plain.denoiser.state_dict().keys()


def test_compile_option_from_the_config(make_config, monkeypatch):
    calls = []
    monkeypatch.setattr(speed, "compile_regions", lambda backbone, **kw: calls.append(backbone) or [])
    backbone = instantiate(make_config("backbone=lumina_tiny", "backbone.compile=regional").backbone)
    assert calls == [backbone]


def test_channels_last_unet(make_config):
    torch.manual_seed(0)
    plain = instantiate(make_config("backbone=sdxl_tiny").backbone)
    torch.manual_seed(0)
    nhwc = instantiate(make_config("backbone=sdxl_tiny", "backbone.channels_last=true").backbone)
    conv = nhwc.denoiser.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    out_a, _ = train_once(plain)
    out_b, _ = train_once(nhwc)
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
