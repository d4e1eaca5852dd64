"""Long prompts for CLIP: token ids -> 77-token chunks, each wrapped in BOS/EOS (NovelAI / A1111 / ComfyUI).

A prompt's tokens (without special tokens) are cut into pieces of `model_max_length - 2` (75 for CLIP);
each piece becomes `BOS piece EOS PAD...` of `model_max_length` ids and is encoded on its own; the hidden
states of a prompt's chunks are concatenated along the sequence, so a 3-chunk prompt gives 231 positions.
Chunk 1 is exactly what diffusers' StableDiffusionXLPipeline encodes for the (truncated) prompt, and the
pooled embedding comes from it. sd-scripts' `--max_token_length 225` builds the same chunk ids (a full piece
ends in EOS, a short one in `EOS PAD...`, an empty one is `BOS EOS PAD...`); it always encodes the
configured number of chunks and then drops the inner BOS/EOS states (75 n + 2 positions), where we keep
them and encode only the chunks a prompt needs.

In a batch, prompts with fewer chunks than the longest are filled with empty chunks (`BOS EOS PAD...`, as
sd-scripts does), encoded once per batch; `mask` marks BOS, tokens and EOS of real chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ChunkedIds:
    """The rows to encode and where their states go."""

    rows: Tensor  # (R, L) token ids: every real chunk of every prompt, then (if needed) one empty chunk
    layout: Tensor  # (B, n) row index of each prompt's chunk k (the empty row where a prompt has < n chunks)
    mask: Tensor  # (B, n * L) bool: True at BOS, tokens and EOS of real chunks
    counts: list[int]  # chunks per prompt

    @property
    def n_chunks(self) -> int:
        return self.layout.shape[1]


def chunk_count(n_tokens: int, piece: int, max_chunks: int) -> int:
    """Chunks a prompt of `n_tokens` (no special tokens) needs: at least 1, at most `max_chunks`."""
    return min(max(1, -(-n_tokens // piece)), max_chunks)


def chunk_rows(token_ids: list[int], n_chunks: int, length: int, bos: int, eos: int, pad: int) -> list[list[int]]:
    """`BOS piece EOS PAD...` rows of `length` ids for the first `n_chunks` pieces of `token_ids`."""
    piece = length - 2
    rows = []
    for k in range(n_chunks):
        part = token_ids[k * piece:(k + 1) * piece]
        rows.append([bos, *part, eos] + [pad] * (piece - len(part)))
    return rows


def chunk_prompts(token_ids: list[list[int]], length: int, max_chunks: int, bos: int, eos: int, pad: int,
                  n_chunks: int | None = None) -> ChunkedIds:
    """Chunk a batch; `n_chunks` forces the batch's chunk count (both SDXL towers must agree)."""
    piece = length - 2
    counts = [chunk_count(len(ids), piece, max_chunks) for ids in token_ids]
    n = n_chunks or max(counts)
    counts = [min(c, n) for c in counts]
    rows: list[list[int]] = []
    layout = torch.empty(len(token_ids), n, dtype=torch.long)
    mask = torch.zeros(len(token_ids), n * length, dtype=torch.bool)
    for b, (ids, count) in enumerate(zip(token_ids, counts, strict=True)):
        for k, row in enumerate(chunk_rows(ids, count, length, bos, eos, pad)):
            layout[b, k] = len(rows)
            rows.append(row)
            real = min(len(ids) - k * piece, piece) + 2  # BOS, tokens, EOS
            mask[b, k * length:k * length + real] = True
    if any(c < n for c in counts):
        layout[layout_fill(counts, n)] = len(rows)
        rows.append([bos, eos] + [pad] * piece)
    return ChunkedIds(torch.tensor(rows, dtype=torch.long), layout, mask, counts)


def layout_fill(counts: list[int], n: int) -> Tensor:
    """(B, n) bool: chunk slots a prompt does not fill."""
    return torch.arange(n)[None, :] >= torch.tensor(counts)[:, None]


def gather_chunks(states: Tensor, layout: Tensor) -> Tensor:
    """(R, L, D) row states -> (B, n * L, D): each prompt's chunks side by side."""
    b, n = layout.shape
    return states[layout.reshape(-1)].reshape(b, n * states.shape[1], states.shape[2])
