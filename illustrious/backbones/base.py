"""The `Backbone` contract: what every denoiser + text encoder + autoencoder bundle offers the trainer.

Time convention (ARCHITECTURE.md, "The time convention"): `t` in [0, 1], 0 = clean data, 1 = pure noise. A backbone adapter converts
`t` to whatever its network was trained with, and nothing outside the adapter ever sees that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn


@dataclass
class Conditioning:
    """Text conditioning with explicit fields (no routing by tensor rank)."""

    tokens: Tensor  # (B, L, D)
    mask: Tensor | None = None  # (B, L) bool, True = real token; right-padded
    pooled: Tensor | None = None  # (B, P); SDXL's pooled CLIP-bigG embedding

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def _map(self, fn) -> Conditioning:
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None})

    def to(self, device=None, dtype=None) -> Conditioning:
        """Move to `device`; cast floating-point fields to `dtype` (the bool mask keeps its dtype)."""
        return self._map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else None))

    def detach(self) -> Conditioning:
        return self._map(Tensor.detach)

    def repeat(self, n: int) -> Conditioning:
        """Each sample repeated `n` times in a row (for several images per prompt)."""
        return self._map(lambda x: x.repeat_interleave(n, dim=0))

    def __getitem__(self, index) -> Conditioning:
        return self._map(lambda x: x[index])

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch, padding token sequences (and masks) to the longest."""
        length = max(p.tokens.shape[1] for p in parts)
        has_mask = any(p.mask is not None for p in parts)
        tokens, masks = [], []
        for p in parts:
            pad = length - p.tokens.shape[1]
            tokens.append(nn.functional.pad(p.tokens, (0, 0, 0, pad)))
            if has_mask:
                mask = p.mask if p.mask is not None else torch.ones(p.tokens.shape[:2], dtype=torch.bool, device=p.tokens.device)
                masks.append(nn.functional.pad(mask, (0, pad), value=False))
        pooled = [p.pooled for p in parts]
        return Conditioning(
            tokens=torch.cat(tokens),
            mask=torch.cat(masks) if has_mask else None,
            pooled=torch.cat(pooled) if all(x is not None for x in pooled) else None,
        )


class Backbone(nn.Module):
    """A denoiser with its text encoders and autoencoder.

    Subclasses set `latent_channels`, `pixel_multiple`, `denoiser`, `text_encoders` (name -> module) and
    `autoencoder`, and implement `encode_text` and `forward`.
    """

    latent_channels: int
    patch_size: int = 1  # latent pixels per token side
    pixel_multiple: int  # bucket sides must be multiples of this (autoencoder factor x patch/downsampling)
    # Learning-rate groups (`optim.lr` = denoiser, `optim.text_encoder_lr` = default for every text encoder,
    # `optim.lrs.<group>` per group): "denoiser" and "text_encoder" (one encoder) or "text_encoder_1", ... in
    # the order of `text_encoders`, the names diffusers and kohya use.
    TEXT_ENCODERS_DEFAULT = "text_encoders"
    # speed levers (`configure_speed`): the SDPA kernel attention prefers, and whether some denoiser blocks
    # are already wrapped for selective activation checkpointing
    attention: str = "auto"
    checkpointed_blocks: int = 0

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        self._frozen: set[str] = set()  # groups frozen by `parameter_groups`
        # group -> name prefix of the adapter parameters that train there (set when LoRA is applied);
        # when any group has adapters, only adapter parameters train anywhere
        self.adapter_prefixes: dict[str, str] = {}

    # -- contract ---------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, batch_extras: Mapping | None = None) -> Tensor:
        raise NotImplementedError

    def parallel_policy(self):
        """Which blocks are FSDP units and which are activation-checkpointed (`<backbone>/parallelize.py`)."""
        raise NotImplementedError(f"{type(self).__name__} declares no parallel policy: FSDP needs one "
                                  "(see illustrious/backbones/sdxl/parallelize.py).")

    @torch.no_grad()
    def encode_image(self, pixels: Tensor) -> Tensor:
        """Pixels in [-1, 1] -> scaled, shifted latents."""
        return self.autoencoder.encode(pixels)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> pixels in [-1, 1]."""
        return self.autoencoder.decode(latents).clamp(-1, 1)

    # The square side (pixels) the backbone trains at natively (SDXL, Lumina-2: 1024; tiny flavors: 32). Bucket
    # areas of image data follow it (illustrious.data.images.settings). None: the denoiser's sample_size
    # (diffusers' native latent side) times the autoencoder's factor; a backbone config may declare it.
    declared_native_resolution: int | None = None

    @property
    def native_resolution(self) -> int:
        if self.declared_native_resolution:
            return int(self.declared_native_resolution)
        return int(self.denoiser.config.sample_size) * self.autoencoder.spatial_factor

    def image_seq_len(self, latents: Tensor) -> int:
        """Tokens the denoiser sees for these latents (drives resolution-dependent timestep shifts)."""
        return (latents.shape[-2] // self.patch_size) * (latents.shape[-1] // self.patch_size)

    # -- optimisation -------------------------------------------------------------------------------
    def text_encoder_groups(self) -> dict[str, str]:
        """Learning-rate group name -> key in `text_encoders`."""
        keys = list(self.text_encoders)
        return {"text_encoder": keys[0]} if len(keys) == 1 else {f"text_encoder_{i}": k for i, k in enumerate(keys, 1)}

    def components(self) -> dict[str, nn.Module]:
        """Trainable parts by learning-rate group."""
        return {"denoiser": self.denoiser, **{g: self.text_encoders[k] for g, k in self.text_encoder_groups().items()}}

    def component_lrs(self, lrs: Mapping[str, float | None]) -> dict[str, float | None]:
        """Each group's learning rate; `text_encoders` is the default for every text-encoder group."""
        from illustrious.errors import ConfigError

        groups = list(self.components())
        unknown = set(lrs) - set(groups) - {self.TEXT_ENCODERS_DEFAULT}
        if unknown:
            raise ConfigError(f"Unknown learning-rate group(s) {sorted(unknown)} in optim.lrs; this backbone has "
                              f"{groups}.")
        negative = {k: v for k, v in lrs.items() if v is not None and v < 0}
        if negative:
            raise ConfigError(f"Learning rates {negative} must be >= 0 (0 freezes the component).")
        default = lrs.get(self.TEXT_ENCODERS_DEFAULT)
        return {g: lrs.get(g, default if g != "denoiser" else None) for g in groups}

    def trainable_parameters(self, group: str) -> list[nn.Parameter]:
        """What trains in a group: everything, or only its adapter weights once LoRA is applied."""
        module = self.components()[group]
        if not self.adapter_prefixes:
            return list(module.parameters())
        prefix = self.adapter_prefixes.get(group)
        return [p for n, p in module.named_parameters() if prefix and prefix in n]

    def parameter_groups(self, lrs: Mapping[str, float | None]) -> list[dict]:
        """One optimizer group per component with a learning rate; a component with lr 0 or None is frozen
        (its parameters stop requiring gradients, and its text encoder runs without autograd)."""
        groups = []
        self._frozen = set()
        for name, lr in self.component_lrs(lrs).items():
            module = self.components()[name]
            module.requires_grad_(False)
            # weights no output depends on (text-encoder layers after the hidden state taken) stay frozen
            # and out of the optimizer, so DDP needs no find_unused_parameters
            unused = {id(p) for sub in module.modules() if hasattr(sub, "unused_parameters")
                      for p in sub.unused_parameters()}
            params = [p for p in self.trainable_parameters(name) if id(p) not in unused] if lr else []
            for p in params:
                p.requires_grad_(True)
            if params:
                groups.append({"params": params, "lr": float(lr), "name": name})
            else:
                self._frozen.add(name)
        if not groups:
            raise ValueError("Every component is frozen: set optim.lr (denoiser) or optim.text_encoder_lr above 0.")
        return groups

    def text_encoder_frozen(self, key: str) -> bool:
        """Whether the text encoder `text_encoders[key]` trains nothing (then it runs under no_grad)."""
        return any(k == key and g in self._frozen for g, k in self.text_encoder_groups().items())

    @property
    def text_encoders_frozen(self) -> bool:
        return all(g in self._frozen for g in self.text_encoder_groups())

    def configure_speed(self, attention: str = "auto", checkpoint_blocks: float = 0.0,
                        compile: str = "none") -> Backbone:
        """The training-speed levers (illustrious/backbones/speed.py): `attention` names the SDPA kernel the
        denoiser prefers (auto, flash, efficient, cudnn, math); `checkpoint_blocks` recomputes this fraction of
        the denoiser's blocks in the backward pass (selective checkpointing; 1 = every block); `compile`
        "regional" compiles each repeated block with torch.compile."""
        from illustrious.backbones import speed
        from illustrious.errors import ConfigError

        speed.sdpa_backends(attention)  # checks the name
        if compile not in speed.COMPILE_MODES:
            raise ConfigError(f"backbone.compile={compile!r}: needs one of {', '.join(speed.COMPILE_MODES)}, "
                              "e.g. backbone.compile=regional.")
        self.attention = attention
        if checkpoint_blocks:
            self.checkpointed_blocks = len(speed.checkpoint_blocks(self, checkpoint_blocks, attention))
        if compile == "regional":
            speed.compile_regions(self)
        return self

    def enable_gradient_checkpointing(self, groups: Sequence[str]) -> None:
        """Recompute activations in the backward pass for these groups (`text_encoders` = all of them),
        through diffusers' `enable_gradient_checkpointing` / transformers' `activation_checkpointing_enable`."""
        from illustrious.backbones.speed import checkpoint_function
        from illustrious.errors import ConfigError

        parts = self.components()
        names = [g for n in groups for g in ([*self.text_encoder_groups()] if n == self.TEXT_ENCODERS_DEFAULT else [n])]
        unknown = set(names) - set(parts)
        if unknown:
            raise ConfigError(f"gradient_checkpointing: unknown component(s) {sorted(unknown)}; this backbone has "
                              f"{[*parts, self.TEXT_ENCODERS_DEFAULT]}.")
        if "denoiser" in names and self.checkpointed_blocks:
            raise ConfigError("gradient_checkpointing=[denoiser] and backbone.checkpoint_blocks both checkpoint the "
                              "denoiser: use one (checkpoint_blocks=1 is every block; 0.5 every other one).")
        for name in names:
            model = getattr(parts[name], "model", parts[name])  # prompt encoders wrap a transformers model
            if hasattr(model, "enable_gradient_checkpointing"):  # diffusers; the recomputation keeps the kernel
                model.enable_gradient_checkpointing(checkpoint_function(self.attention))
            elif hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                raise ConfigError(f"gradient_checkpointing: {name} ({type(model).__name__}) does not support it.")

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()  # never trained here; keeps dropout/norm statistics fixed
        for group, key in self.text_encoder_groups().items():
            if group in self._frozen:
                self.text_encoders[key].eval()
        return self
