"""The `Backbone` contract: what every denoiser + text encoder + autoencoder bundle offers the trainer.

Time convention (DESIGN.md): `t` in [0, 1], 0 = clean data, 1 = pure noise. A backbone adapter converts
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
    # Names of the learning-rate groups a config may set (`optim.lr` / `optim.text_encoder_lr`).
    component_groups = ("denoiser", "text_encoders")

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        self._frozen_text_encoders = False

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

    def image_seq_len(self, latents: Tensor) -> int:
        """Tokens the denoiser sees for these latents (drives resolution-dependent timestep shifts)."""
        return (latents.shape[-2] // self.patch_size) * (latents.shape[-1] // self.patch_size)

    # -- optimisation -------------------------------------------------------------------------------
    def components(self) -> dict[str, list[nn.Module]]:
        """Trainable parts by learning-rate group."""
        return {"denoiser": [self.denoiser], "text_encoders": list(self.text_encoders.values())}

    def parameter_groups(self, lrs: Mapping[str, float | None]) -> list[dict]:
        """One optimizer group per component with a learning rate; a component with lr 0 or None is frozen."""
        parts = self.components()
        unknown = set(lrs) - set(parts)
        if unknown:
            raise ValueError(f"Unknown learning-rate group(s) {sorted(unknown)}; this backbone has {sorted(parts)}.")
        groups = []
        for name, modules in parts.items():
            lr = lrs.get(name)
            # weights no output depends on (text-encoder layers after the hidden state taken) stay frozen
            # and out of the optimizer, so DDP needs no find_unused_parameters
            unused = {id(p) for m in modules for sub in m.modules() if hasattr(sub, "unused_parameters")
                      for p in sub.unused_parameters()}
            params = [p for m in modules for p in m.parameters() if id(p) not in unused]
            trainable = bool(lr) and bool(params)
            for p in params:
                p.requires_grad_(trainable)
            for p in (p for m in modules for p in m.parameters() if id(p) in unused):
                p.requires_grad_(False)
            if name == "text_encoders":
                self._frozen_text_encoders = not trainable
            if trainable:
                groups.append({"params": params, "lr": float(lr), "name": name})
        if not groups:
            raise ValueError("Every component is frozen: set optim.lr (denoiser) or optim.text_encoder_lr above 0.")
        return groups

    @property
    def text_encoders_frozen(self) -> bool:
        return self._frozen_text_encoders

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()  # never trained here; keeps dropout/norm statistics fixed
        if self._frozen_text_encoders:
            for m in self.text_encoders.values():
                m.eval()
        return self
