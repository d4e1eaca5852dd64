"""`data.group_by_chunks=true`: batches of prompts that need the same number of SDXL chunks.

Each epoch, before it starts, every sample's caption for that epoch is drawn (the same draw `Collate` makes:
a pure function of (seed, epoch, index)) and tokenized; its chunk count is the most any chunked CLIP
encoder of the backbone needs (`prompt_chunks.chunk_count`: ceil(tokens / 75), at least 1, at most
`max_chunks`). `BucketBatchSampler(chunk_counts=...)` then puts equal counts side by side in each bucket.
Streams (data=webdataset) count per sample as it arrives: `PromptChunks` (tokenizers only, so it travels to
loader workers without the text encoders' weights), which the stream's bucket batcher groups by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from illustrious.backbones.prompt_chunks import chunk_count
from illustrious.errors import ConfigError


class PromptChunks:
    """prompts -> chunks each needs: the most any chunked encoder needs (`prompt_chunks.chunk_count`).

    Holds the encoders' tokenizers and limits only, so it travels to loader workers without their weights;
    tokenizes as the encoders' own `token_ids` does (no special tokens, untruncated)."""

    def __init__(self, encoders: Sequence):
        if not encoders:
            raise ConfigError("data.group_by_chunks=true needs a backbone whose prompts are cut into chunks (SDXL's "
                              "CLIP encoders, backbone.max_chunks); this one has none. Set data.group_by_chunks=false.")
        self.tokenizers = [(e.tokenizer, e.tokenizer.model_max_length - 2, e.max_chunks) for e in encoders]

    def counts(self, prompts: list[str]) -> np.ndarray:
        need = np.ones(len(prompts), dtype=np.int64)
        for tokenizer, piece, max_chunks in self.tokenizers:
            ids = tokenizer(prompts, add_special_tokens=False, truncation=False, verbose=False).input_ids
            need = np.maximum(need, [chunk_count(len(i), piece, max_chunks) for i in ids])
        return need

    def __call__(self, prompt: str) -> int:
        return int(self.counts([prompt])[0])


class ChunkCounts:
    """epoch -> (N,) chunks each sample's caption needs that epoch (map-style sources, counted in batches)."""

    def __init__(self, sources: Sequence, caption: Callable[[object, int, int], str], encoders: Sequence,
                 batch: int = 4096):
        self.sources, self.caption, self.chunks, self.batch = sources, caption, PromptChunks(encoders), batch

    def __call__(self, epoch: int) -> np.ndarray:
        counts = np.ones(len(self.sources), dtype=np.int64)
        for start in range(0, len(self.sources), self.batch):
            index = range(start, min(start + self.batch, len(self.sources)))
            counts[start:start + len(index)] = self.chunks.counts([self.caption(self.sources[i], epoch, i)
                                                                    for i in index])
        return counts


def chunked_encoders(backbone) -> list:
    """The backbone's prompt encoders that cut prompts into chunks."""
    return [e for e in backbone.text_encoders.values() if hasattr(e, "max_chunks") and hasattr(e, "token_ids")]


def _backbone(trainer):
    backbone = getattr(getattr(trainer, "lightning_module", None), "backbone", None)
    if backbone is None:
        raise ConfigError("data.group_by_chunks needs the module's backbone (its tokenizers); this module has none.")
    return backbone


def chunk_counts_for(trainer, sources: Sequence, caption: Callable) -> ChunkCounts:
    return ChunkCounts(sources, caption, chunked_encoders(_backbone(trainer)))


def prompt_chunks_for(trainer) -> PromptChunks:
    return PromptChunks(chunked_encoders(_backbone(trainer)))
