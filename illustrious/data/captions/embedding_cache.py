"""Text-embedding caching that keeps caption augmentation: K augmented captions per sample, encoded once.

Variant k of sample i is the caption the pipeline draws for (seed, epoch=k, i); at epoch e the sample
trains on variant `variant_of(seed, e, i)`, drawn uniformly from (seed, e, i), so every epoch sees a
different mix of the K variants. With K = 1 and a pipeline that augments, every step would see the same
caption: that is refused, since it silently turns shuffling and dropout off.

Entries keep their own length: masked conditioning (Lumina; SDXL with mask_padding) is cut after the last
real token and padded back with zeros and False; unmasked SDXL keeps its real chunks and is padded back
with the empty chunk (`BOS EOS PAD...`), which is exactly what encoding the batch together would give.
Stored as safetensors, one file per block of samples.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from illustrious.backbones.base import Backbone, Conditioning
from illustrious.data.captions.rng import CaptionKey, key_int
from illustrious.errors import ConfigError

BLOCK = 1024  # samples per file
VARIANT_DOMAIN = 0x5EED_CAC4E  # separates the variant draw from the caption draws of the same key


def check_variants(variants: int, augments: bool) -> None:
    if variants < 1:
        raise ConfigError(f"text-embedding cache: variants={variants}; need at least 1.")
    if variants == 1 and augments:
        raise ConfigError("text-embedding cache with variants=1 while the caption pipeline augments (shuffle, dropout, "
                          "...): every step would train on one fixed caption per sample, i.e. no augmentation. Set "
                          "variants to 4 or more (each epoch draws one of them), or use captions=plain with dropout=0.")


def variant_of(key: CaptionKey, variants: int) -> int:
    return random.Random(key_int(key) ^ VARIANT_DOMAIN).randrange(variants)


def trim(cond: Conditioning, row: int, filler: Tensor | None) -> dict[str, Tensor]:
    """One sample's entry at its own length."""
    tokens = cond.tokens[row]
    entry = {}
    if cond.mask is not None:
        real = torch.nonzero(cond.mask[row]).flatten()
        length = int(real[-1]) + 1 if len(real) else 1
        entry["mask"] = cond.mask[row, :length].contiguous()
    else:
        chunk = filler.shape[0]
        length = tokens.shape[0]
        while length > chunk and torch.equal(tokens[length - chunk:length], filler):
            length -= chunk  # trailing empty chunks were batch padding
    entry["tokens"] = tokens[:length].contiguous()
    if cond.pooled is not None:
        entry["pooled"] = cond.pooled[row].contiguous()
    return entry


class TextEmbeddingCache:
    def __init__(self, folder: str | Path, variants: int, seed: int):
        self.folder, self.variants, self.seed = Path(folder), variants, seed
        self._blocks: dict[int, dict[tuple[int, int], dict[str, Tensor]]] = {}
        self._filler: Tensor | None = None

    @torch.no_grad()
    def build(self, backbone: Backbone, sources: Sequence, pipeline: Callable, batch_size: int = 64) -> None:
        """Encode K variants of every sample's caption (`pipeline(source, CaptionKey(seed, k, i))`)."""
        check_variants(self.variants, getattr(pipeline, "augments", True))
        self.folder.mkdir(parents=True, exist_ok=True)
        empty = backbone.encode_text([""])
        filler = None if empty.mask is not None else empty.tokens[0].float().cpu()
        items = [(i, k) for i in range(len(sources)) for k in range(self.variants)]
        blocks: dict[int, dict[str, Tensor]] = {}
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            prompts = [pipeline(sources[i], CaptionKey(self.seed, k, i)) for i, k in part]
            cond = backbone.encode_text(prompts).to("cpu", torch.float32)
            for row, (i, k) in enumerate(part):
                for name, value in trim(cond, row, filler).items():
                    blocks.setdefault(i // BLOCK, {})[f"{i}/{k}/{name}"] = value
        for block, tensors in blocks.items():
            save_file(tensors, str(self.folder / f"block-{block:06d}.safetensors"))
        if filler is not None:
            save_file({"filler": filler}, str(self.folder / "filler.safetensors"))
        meta = {"variants": self.variants, "seed": self.seed, "samples": len(sources)}
        tmp = self.folder / "cache.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(self.folder / "cache.json")

    def check_built(self, samples: int) -> None:
        path = self.folder / "cache.json"
        if not path.is_file():
            raise ConfigError(f"No text-embedding cache at {self.folder}; build it first.")
        meta = json.loads(path.read_text())
        if meta != {"variants": self.variants, "seed": self.seed, "samples": samples}:
            raise ConfigError(f"The text-embedding cache at {self.folder} was built for {meta}, not "
                              f"variants={self.variants}, seed={self.seed}, samples={samples}; rebuild it.")

    def entry(self, index: int, epoch: int) -> dict[str, Tensor]:
        k = variant_of(CaptionKey(self.seed, epoch, index), self.variants)
        block = self._blocks.get(index // BLOCK)
        if block is None:
            block = {}
            for name, t in load_file(str(self.folder / f"block-{index // BLOCK:06d}.safetensors")).items():
                i, v, field = name.split("/")
                block.setdefault((int(i), int(v)), {})[field] = t
            self._blocks[index // BLOCK] = block
        return block[(index, k)]

    def filler(self) -> Tensor | None:
        if self._filler is None and (self.folder / "filler.safetensors").is_file():
            self._filler = load_file(str(self.folder / "filler.safetensors"))["filler"]
        return self._filler

    def collate(self, entries: Sequence[dict[str, Tensor]]) -> Conditioning:
        """Entries of one batch -> one Conditioning, padded as encoding them together would."""
        length = max(e["tokens"].shape[0] for e in entries)
        filler = self.filler()
        tokens, masks = [], []
        for e in entries:
            t = e["tokens"]
            pad = length - t.shape[0]
            if "mask" in e:
                tokens.append(torch.nn.functional.pad(t, (0, 0, 0, pad)))
                masks.append(torch.nn.functional.pad(e["mask"], (0, pad), value=False))
            else:
                tokens.append(torch.cat([t, filler.repeat(pad // filler.shape[0], 1)]) if pad else t)
        pooled = [e["pooled"] for e in entries] if "pooled" in entries[0] else None
        return Conditioning(tokens=torch.stack(tokens), mask=torch.stack(masks) if masks else None,
                            pooled=torch.stack(pooled) if pooled else None)
