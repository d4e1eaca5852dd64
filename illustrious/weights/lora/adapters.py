"""Putting peft adapters (LoRA, LoHa, LoKr) on a backbone's denoiser and text encoders, reading their
factors per layer, and merging them into the base weights.

Adapters go on the transformers/diffusers model itself (a prompt encoder's `.model`), so module paths
are the ones diffusers, kohya and ComfyUI name: `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`,
`text_model.encoder.layers.0.self_attn.q_proj`, `layers.0.attn.to_q`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from illustrious.errors import ConfigError

ADAPTER = "default"  # the peft adapter name; one adapter per model

# Default targets per network class: the attention and feed-forward linears of every transformer block,
# as kohya's sd-scripts (SDXL) and diffusers' Lumina-2 LoRA conversion (all blocks, adaLN included) expect.
DEFAULT_TARGETS: dict[str, list[str] | str] = {
    "UNet2DConditionModel": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
    "Lumina2Transformer2DModel": r".*(layers|noise_refiner|context_refiner)\.\d+\."
                                 r"(attn\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.linear_[123]|norm1\.linear)",
    "CLIPTextModel": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "CLIPTextModelWithProjection": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "Gemma2Model": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

# method -> (peft config class name, its name prefix, the factor that carries the scale when files differ)
METHODS = {"lora": ("LoraConfig", "lora_", "lora_B"), "loha": ("LoHaConfig", "hada_", "hada_w1_a"),
           "lokr": ("LoKrConfig", "lokr_", "lokr_w1")}


@dataclass
class LoraSettings:
    """What the `lora=` config group holds.

    `text_encoders` lists the text-encoder groups that get adapters (`text_encoders` = all of them);
    targets of None use `DEFAULT_TARGETS`. `weights` continues from a saved LoRA file (any format we write).
    `save` lists the formats written at the end of training (see `illustrious.weights.lora.files`).
    """

    method: str = "lora"
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    denoiser: bool = True
    text_encoders: Sequence[str] = ()
    denoiser_targets: list[str] | str | None = None
    text_encoder_targets: list[str] | str | None = None
    weights: str | None = None
    save: Sequence[str] = field(default_factory=lambda: ("native", "diffusers"))

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"lora.method={self.method!r}: choose one of {sorted(METHODS)}.")
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: rank={self.rank} must be >= 1, alpha={self.alpha} > 0, dropout={self.dropout} in [0, 1).")

    def peft_config(self, targets):
        import peft

        cls = getattr(peft, METHODS[self.method][0])
        if self.method == "lora":
            return cls(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        return cls(r=self.rank, alpha=self.alpha, module_dropout=self.dropout, target_modules=targets)


def network(component: nn.Module) -> nn.Module:
    """The diffusers/transformers model inside a component (prompt encoders wrap theirs as `.model`)."""
    return getattr(component, "model", component)


def apply_lora(backbone, settings: LoraSettings) -> list[str]:
    """Inject adapters into the chosen components; afterwards only adapter weights train. Returns the groups."""
    from peft import inject_adapter_in_model

    parts = backbone.components()
    groups = (["denoiser"] if settings.denoiser else []) + [
        g for name in settings.text_encoders
        for g in ([*backbone.text_encoder_groups()] if name == backbone.TEXT_ENCODERS_DEFAULT else [name])]
    unknown = set(groups) - set(parts)
    if unknown or not groups:
        raise ConfigError(f"lora: no such component(s) {sorted(unknown)}; choose lora.denoiser and/or "
                          f"lora.text_encoders from {[g for g in parts if g != 'denoiser']} (or text_encoders).")
    for group in groups:
        model = network(parts[group])
        targets = settings.denoiser_targets if group == "denoiser" else settings.text_encoder_targets
        targets = targets if targets is not None else DEFAULT_TARGETS.get(type(model).__name__)
        if targets is None:
            raise ConfigError(f"lora: no default targets for {type(model).__name__}; set lora.denoiser_targets / "
                              "lora.text_encoder_targets to module names.")
        try:
            inject_adapter_in_model(settings.peft_config(targets), model, adapter_name=ADAPTER)
        except ValueError as e:  # peft: no module matched
            raise ConfigError(f"lora: targets {targets} for {group}: {e}") from None
        backbone.adapter_prefixes[group] = METHODS[settings.method][1]
    backbone.lora_settings = settings
    return groups


def adapted_layers(backbone) -> Iterator[tuple[str, str, nn.Module]]:
    """(group, module path inside the network, peft tuner layer) for every adapted layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for group in backbone.adapter_prefixes:
        for path, module in network(backbone.components()[group]).named_modules():
            if isinstance(module, BaseTunerLayer) and ADAPTER in module.scaling:
                yield group, path, module


def factors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors of one layer by peft name (`lora_A`, `hada_w1_a`, `lokr_w2_b`, ...)."""
    out = {}
    for name in layer.adapter_layer_names:
        container = getattr(layer, name)
        if ADAPTER in container:
            value = container[ADAPTER]
            out[name] = value.weight if isinstance(value, nn.Module) else value
    return out


def rank_and_alpha(layer: nn.Module) -> tuple[int, float]:
    alpha = layer.lora_alpha if hasattr(layer, "lora_alpha") else layer.alpha
    return int(layer.r[ADAPTER]), float(alpha[ADAPTER])


@torch.no_grad()
def merge_lora(backbone) -> None:
    """Fold every adapter into its base weight (W + scale * delta) and remove the adapter layers, so the
    backbone is a plain model again (the weights a full-checkpoint export writes)."""
    for group in list(backbone.adapter_prefixes):
        model = network(backbone.components()[group])
        for path, module in list(adapted_layers_of(model)):
            module.merge(adapter_names=[ADAPTER])
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, module.get_base_layer())
        model.__dict__.pop("peft_config", None)
    backbone.adapter_prefixes.clear()


def adapted_layers_of(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(p, m) for p, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
