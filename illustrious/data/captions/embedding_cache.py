"""Text-embedding caching that keeps caption augmentation: K augmented captions per sample, encoded once.

What the cache holds: for sample i, K entries; entry k is the encoding of the caption the pipeline draws
for `CaptionKey(seed, epoch=k, index=i)`. A sample's index is its caption key: a position (shapes, folders), or
for streamed samples whatever stable key the stream draws captions from (WebDataset: shard << 32 | position);
the sources give `(index, record)` pairs in increasing index order (`keyed`), and entries are stored by index. At epoch e the sample trains on entry `variant_of((seed, e, i), K)`,
drawn uniformly from (seed, e, i), so every epoch sees a different mix of the K variants, and the caption
is `pipeline(source, variant_key((seed, e, i)))`, a pure function of the key as without the cache (the
batch's `captions` say which one). With K = 1 and a pipeline that augments, every step would see the same
caption: that is refused, since it silently turns shuffling and dropout off.

Entries keep their own length: masked conditioning (Lumina; SDXL with mask_padding) is cut after the last
real token and padded back with zeros and False; unmasked SDXL keeps its real chunks and is padded back
with the empty chunk (`BOS EOS PAD...`), which is exactly what encoding the batch together gives.
Stored as safetensors, one file per block of samples (written whole, then renamed), read lazily one entry
at a time; `cache.json` (written last) holds what the cache was built from (`cache_fingerprint.py`), and a
cache built from anything else is refused.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from illustrious.backbones.base import Backbone, Conditioning, pad_tokens
from illustrious.data.captions.rng import CaptionKey, key_int
from illustrious.errors import ConfigError

BLOCK = 1024  # samples per file
VARIANT_DOMAIN = 0x5EED_CAC4E  # separates the variant draw from the caption draws of the same key
META = "cache.json"


def check_variants(variants: int, augments: bool) -> None:
    if variants < 1:
        raise ConfigError(f"text-embedding cache: variants={variants}; need at least 1.")
    if variants == 1 and augments:
        raise ConfigError("text-embedding cache with variants=1 while the caption pipeline augments (shuffle, dropout, "
                          "...): every step would train on one fixed caption per sample, i.e. no augmentation. Set "
                          "variants to 4 or more (each epoch draws one of them), or use captions=plain with dropout=0.")


def keyed(sources) -> Iterator[tuple[int, object]]:
    """(index, caption record) pairs of a cache's sources: a sequence (index = position), or an object with
    `items()` giving them itself (streamed data, keyed by its own sample keys)."""
    items = getattr(sources, "items", None)
    return items() if items is not None else ((i, sources[i]) for i in range(len(sources)))


def variant_of(key: CaptionKey, variants: int) -> int:
    return random.Random(key_int(key) ^ VARIANT_DOMAIN).randrange(variants)


def variant_key(key: CaptionKey, variants: int) -> CaptionKey:
    """The key whose caption the cache holds for a draw at `key`: (seed, variant, index)."""
    return CaptionKey(key.seed, variant_of(key, variants), key.index)


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
        self._files: dict[int, tuple] = {}  # block -> (open safetensors file, its names); per process, never pickled
        self._filler: Tensor | None = None

    def __getstate__(self) -> dict:  # loader workers open their own files
        return {**self.__dict__, "_files": {}}

    def block_path(self, block: int) -> Path:
        return self.folder / f"block-{block:06d}.safetensors"

    @torch.no_grad()
    def build(self, backbone: Backbone, sources, pipeline: Callable, batch_size: int = 64,
              description: Mapping | None = None) -> int:
        """Encode K variants of every sample's caption (`pipeline(record, CaptionKey(seed, k, i))` for each
        (i, record) of `keyed(sources)`), block by block; `description` (what it was built from) goes into
        cache.json, written last. Returns the number of samples."""
        check_variants(self.variants, getattr(pipeline, "augments", True))
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / META).unlink(missing_ok=True)  # an interrupted rebuild never passes for a finished one
        empty = backbone.encode_text([""])
        filler = None if empty.mask is not None else empty.tokens[0].float().cpu()
        samples, written = 0, set()
        for block, group in itertools.groupby(keyed(sources), key=lambda pair: pair[0] // BLOCK):
            if block in written:
                raise ValueError(f"text-embedding cache sources are not in index order (block {block} came twice)")
            written.add(block)
            items = [(i, record, k) for i, record in group for k in range(self.variants)]
            samples += len(items) // self.variants
            tensors: dict[str, Tensor] = {}
            for start in range(0, len(items), batch_size):
                part = items[start:start + batch_size]
                prompts = [pipeline(record, CaptionKey(self.seed, k, i)) for i, record, k in part]
                cond = backbone.encode_text(prompts).to("cpu", torch.float32)
                for row, (i, _, k) in enumerate(part):
                    tensors.update({f"{i}/{k}/{name}": v for name, v in trim(cond, row, filler).items()})
            save_atomic(tensors, self.block_path(block))
        if filler is not None:
            save_atomic({"filler": filler}, self.folder / "filler.safetensors")
        meta = {**self.identity(samples), **dict(description or {})}
        tmp = self.folder / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        tmp.replace(self.folder / META)
        return samples

    def identity(self, samples: int) -> dict:
        return {"variants": self.variants, "seed": self.seed, "samples": samples}

    def is_built(self) -> bool:
        return (self.folder / META).is_file()

    def check_built(self, samples: int | None, description: Mapping | None = None) -> None:
        """Refuse a missing cache, or one built for other samples, variants, seed, text encoders or captions
        (`samples=None`: sources that do not know their count without reading everything; their `description`
        must say what they are)."""
        if not self.is_built():
            raise ConfigError(f"No text-embedding cache at {self.folder}; build it first.")
        meta = json.loads((self.folder / META).read_text())
        identity = self.identity(samples)
        if samples is None:
            del identity["samples"]
        want = json.loads(json.dumps({**identity, **dict(description or {})}))  # JSON's own types
        wrong = [k for k in sorted(want) if meta.get(k) != want[k]]
        if wrong:
            details = "; ".join(f"{k}: cache has {json.dumps(meta.get(k))[:300]}, this run has "
                                f"{json.dumps(want[k])[:300]}" for k in wrong)
            raise ConfigError(f"The text-embedding cache at {self.folder} was built for something else ({details}). "
                              "A cache holds one text encoder's output (weights, tokenizer, max length, system "
                              "prompt) for one caption pipeline and data set: delete the folder to rebuild it, or "
                              "point data.text_cache at a new one.")

    def entry(self, index: int, epoch: int) -> dict[str, Tensor]:
        """Sample `index`'s entry at `epoch` (the variant that epoch draws)."""
        return self.variant_entry(index, variant_of(CaptionKey(self.seed, epoch, index), self.variants))

    def variant_entry(self, index: int, variant: int) -> dict[str, Tensor]:
        block = index // BLOCK
        if block not in self._files:
            path = self.block_path(block)
            if not path.is_file():
                raise self.missing(index, f"{path.name} does not exist")
            handle = safe_open(str(path), framework="pt")
            self._files[block] = handle, set(handle.keys())
        handle, names = self._files[block]
        prefix = f"{index}/{variant}/"
        if prefix + "tokens" not in names:
            raise self.missing(index, f"{self.block_path(block).name} has no entry {prefix}")
        return {name: handle.get_tensor(prefix + name) for name in ("tokens", "mask", "pooled") if prefix + name in names}

    def missing(self, index: int, why: str) -> ConfigError:
        return ConfigError(f"Sample {index} is not in the text-embedding cache {self.folder} ({why}): the cache was "
                           "built for other data. Delete the folder to rebuild it, or point data.text_cache at a new one.")

    def filler(self) -> Tensor | None:
        if self._filler is None and (self.folder / "filler.safetensors").is_file():
            with safe_open(str(self.folder / "filler.safetensors"), framework="pt") as f:
                self._filler = f.get_tensor("filler")
        return self._filler

    def collate(self, entries: Sequence[dict[str, Tensor]]) -> Conditioning:
        """Entries of one batch -> one Conditioning, padded as encoding them together would."""
        length = max(e["tokens"].shape[0] for e in entries)
        filler = self.filler()
        tokens, masks = [], []
        for e in entries:
            t, pad = e["tokens"], length - e["tokens"].shape[0]
            if "mask" in e:
                masks.append(torch.nn.functional.pad(e["mask"], (0, pad), value=False))
            tokens.append(t if pad == 0 else pad_tokens(t[None], pad, None if "mask" in e else filler)[0])
        pooled = [e["pooled"] for e in entries] if "pooled" in entries[0] else None
        return Conditioning(tokens=torch.stack(tokens), mask=torch.stack(masks) if masks else None,
                            pooled=torch.stack(pooled) if pooled else None)


def save_atomic(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
