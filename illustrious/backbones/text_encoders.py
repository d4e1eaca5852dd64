"""Text towers: tokenizer + transformers model -> hidden states the denoiser attends to.

Both follow their reference pipelines: SDXL takes the penultimate hidden state of CLIP-L and of
OpenCLIP-bigG (concatenated by the backbone) and bigG's projected pooled embedding, optionally over
several 77-token chunks; Lumina-2 prefixes a non-empty prompt with
a system prompt and takes Gemma-2's penultimate hidden state with a right-padded attention mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from illustrious.backbones.architectures import architecture_with
from illustrious.backbones.prompt_chunks import ChunkedIds, chunk_prompts, gather_chunks
from illustrious.backbones.system_prompts import SYSTEM_PROMPTS, resolve_system_prompt, with_system_prompt

PACKAGE_DIR = Path(__file__).parent
TOKENIZERS_DIR = PACKAGE_DIR / "tokenizers"


# Shipped tokenizers that are another shipped tokenizer with different settings (no second copy of the files).
# SDXL's tokenizer_2 (OpenCLIP-bigG) is CLIP ViT-L/14's vocabulary padded with "!" (id 0), as OpenCLIP pads.
TOKENIZER_VARIANTS = {"clip_g": ("clip_l", {"pad_token": "!"})}


def shipped_tokenizers() -> list[str]:
    folders = [p.name for p in TOKENIZERS_DIR.iterdir() if p.is_dir()] if TOKENIZERS_DIR.is_dir() else []
    return sorted([*folders, *TOKENIZER_VARIANTS])


def resolve_tokenizer_path(name_or_path: str) -> Path:
    """A tokenizer shipped with the package (by name) or a local folder; nothing is downloaded."""
    shipped = TOKENIZERS_DIR / TOKENIZER_VARIANTS.get(name_or_path, (name_or_path,))[0]
    if shipped.is_dir():
        return shipped
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"Tokenizer {name_or_path!r} is neither a shipped tokenizer ({shipped_tokenizers()}) nor a local folder. "
        "Point it at a folder saved with `save_pretrained` (e.g. a diffusers model's tokenizer/ subfolder)."
    )


def load_tokenizer(name_or_path: str):
    """A shipped tokenizer by name (`clip_l`, `clip_g`: SDXL's real ones; `clip_tiny`, `gemma_tiny`) or a folder."""
    from transformers import AutoTokenizer

    settings = TOKENIZER_VARIANTS.get(name_or_path, (None, {}))[1]
    return AutoTokenizer.from_pretrained(resolve_tokenizer_path(name_or_path), local_files_only=True, **settings)


class CLIPPromptEncoder(nn.Module):
    """One CLIP text tower; returns (penultimate hidden states, projected pooled embedding or None, mask).

    With `max_chunks` > 1 a prompt longer than `model_max_length - 2` tokens is encoded in chunks
    (`illustrious.backbones.prompt_chunks`); the pooled embedding is the first chunk's. With one chunk the
    states are exactly diffusers' (padded to `model_max_length`, truncated). The mask is True at BOS,
    tokens and EOS of real chunks.
    """

    def __init__(self, tokenizer, model: nn.Module, max_chunks: int = 1):
        super().__init__()
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        self.tokenizer = tokenizer
        self.model = model
        self.max_chunks = max_chunks

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        """Prompt tokens without BOS/EOS, untruncated (chunking truncates)."""
        return self.tokenizer(prompts, add_special_tokens=False, truncation=False, verbose=False).input_ids

    def chunks(self, prompts: list[str], n_chunks: int | None = None) -> ChunkedIds:
        tok = self.tokenizer
        return chunk_prompts(self.token_ids(prompts), tok.model_max_length, self.max_chunks, tok.bos_token_id,
                             tok.eos_token_id, tok.pad_token_id, n_chunks=n_chunks)

    def forward(self, prompts: list[str], n_chunks: int | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        chunked = self.chunks(prompts, n_chunks)
        out = self.model(chunked.rows.to(self.model.device), output_hidden_states=True)
        states = gather_chunks(out.hidden_states[-2], chunked.layout.to(self.model.device))
        pooled = getattr(out, "text_embeds", None)
        if pooled is not None:
            pooled = pooled[chunked.layout[:, 0].to(pooled.device)]
        return states, pooled, chunked.mask.to(states.device)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Weights no output depends on: without a projection (CLIP-L) the pooled output is dropped, so the
        last layer and the final norm, which only follow the penultimate state, never get a gradient
        (DDP refuses trainable parameters without one). With a projection (bigG) the pooled embedding
        runs through them and everything is used."""
        if hasattr(self.model, "text_projection"):
            return []
        text = getattr(self.model, "text_model", self.model)  # transformers 5 flattens CLIPTextModel
        return [*text.encoder.layers[-1].parameters(), *text.final_layer_norm.parameters()]


def clip_text_model(base: str, overrides: dict, tokenizer, with_projection: bool, key: str) -> nn.Module:
    """A CLIP text model of a shipped architecture with `overrides` (e.g. tiny widths; config key `key`) applied."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = architecture_with(base, overrides, key)
    config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, max_position_embeddings=tokenizer.model_max_length)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**config))


LUMINA_SYSTEM_PROMPT = SYSTEM_PROMPTS["diffusers"]


class GemmaPromptEncoder(nn.Module):
    """Gemma-2 as Lumina-2 uses it: system prompt prefix, right padding, penultimate hidden state + mask.

    `system_prompt` is a name from `illustrious.backbones.system_prompts` or a custom sentence; an empty
    prompt is encoded bare (Lumina2Pipeline and Lumina-Image-2.0 do so; see that module).
    Pads to the longest prompt in the batch rather than to `max_length`: with right padding and causal
    attention the real tokens' states are identical, and the denoiser masks the rest.
    """

    def __init__(self, tokenizer, model: nn.Module, system_prompt: str = "diffusers", max_length: int = 256):
        super().__init__()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.model = model
        self.system_prompt = resolve_system_prompt(system_prompt)
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def format(self, prompt: str) -> str:
        return with_system_prompt(self.system_prompt, prompt)

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer([self.format(p) for p in prompts], padding="longest", max_length=self.max_length,
                               truncation=True, return_tensors="pt").to(self.model.device)
        out = self.model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        return out.hidden_states[-2], batch.attention_mask.bool()

    def unused_parameters(self) -> list[nn.Parameter]:
        """The last decoder layer and the final norm come after the penultimate state: never used."""
        return [*self.model.layers[-1].parameters(), *self.model.norm.parameters()]


def gemma2_text_model(overrides: Mapping | None, tokenizer) -> nn.Module:
    from transformers import Gemma2Config, Gemma2Model

    config = architecture_with("gemma2_text_encoder", overrides, "backbone.text_encoder")
    config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return Gemma2Model(Gemma2Config(**config))


def maybe_no_grad(frozen: bool):
    return torch.no_grad() if frozen else torch.enable_grad()
