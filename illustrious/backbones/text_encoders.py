"""Text towers: tokenizer + transformers model -> hidden states the denoiser attends to.

Both follow their reference pipelines: SDXL takes the penultimate hidden state of CLIP-L and of
OpenCLIP-bigG (concatenated by the backbone) and bigG's projected pooled embedding; Lumina-2 prefixes
a system prompt and takes Gemma-2's penultimate hidden state with a right-padded attention mask.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

PACKAGE_DIR = Path(__file__).parent
TOKENIZERS_DIR = PACKAGE_DIR / "tokenizers"
CONFIGS_DIR = PACKAGE_DIR / "configs"


@cache
def architecture_config(name: str) -> dict:
    """A real architecture config shipped in `illustrious/backbones/configs/<name>.json`."""
    path = CONFIGS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))
        raise FileNotFoundError(f"No architecture config {name!r}; shipped configs: {known}")
    return json.loads(path.read_text())


def resolve_tokenizer_path(name_or_path: str) -> Path:
    """A tokenizer shipped with the package (by name) or a local folder; nothing is downloaded."""
    shipped = TOKENIZERS_DIR / name_or_path
    if shipped.is_dir():
        return shipped
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    known = sorted(p.name for p in TOKENIZERS_DIR.iterdir() if p.is_dir()) if TOKENIZERS_DIR.is_dir() else []
    raise FileNotFoundError(
        f"Tokenizer {name_or_path!r} is neither a shipped tokenizer ({known}) nor a local folder. "
        "Point it at a folder saved with `save_pretrained` (e.g. a diffusers model's tokenizer/ subfolder)."
    )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_tokenizer_path(name_or_path), local_files_only=True)


class CLIPPromptEncoder(nn.Module):
    """One CLIP text tower; returns (penultimate hidden states, projected pooled embedding or None)."""

    def __init__(self, tokenizer, model: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.model.device)
        out = self.model(ids, output_hidden_states=True)
        return out.hidden_states[-2], getattr(out, "text_embeds", None)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Weights no output depends on: without a projection (CLIP-L) the pooled output is dropped, so the
        last layer and the final norm, which only follow the penultimate state, never get a gradient
        (DDP refuses trainable parameters without one). With a projection (bigG) the pooled embedding
        runs through them and everything is used."""
        if hasattr(self.model, "text_projection"):
            return []
        text = getattr(self.model, "text_model", self.model)  # transformers 5 flattens CLIPTextModel
        return [*text.encoder.layers[-1].parameters(), *text.final_layer_norm.parameters()]


def clip_text_model(base: str, overrides: dict, tokenizer, with_projection: bool) -> nn.Module:
    """A CLIP text model of a shipped architecture with `overrides` (e.g. tiny widths) applied."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = {**architecture_config(base), **overrides}
    config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, max_position_embeddings=tokenizer.model_max_length)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**config))


LUMINA_SYSTEM_PROMPT = (
    "You are an assistant designed to generate superior images with the superior degree of image-text "
    "alignment based on textual prompts or user prompts."
)


class GemmaPromptEncoder(nn.Module):
    """Gemma-2 as Lumina-2 uses it: system prompt prefix, right padding, penultimate hidden state + mask.

    Pads to the longest prompt in the batch rather than to `max_length`: with right padding and causal
    attention the real tokens' states are identical, and the denoiser masks the rest.
    """

    def __init__(self, tokenizer, model: nn.Module, system_prompt: str = LUMINA_SYSTEM_PROMPT, max_length: int = 256):
        super().__init__()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.model = model
        self.system_prompt = system_prompt
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def format(self, prompt: str) -> str:
        return f"{self.system_prompt} <Prompt Start> {prompt}" if self.system_prompt else prompt

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer([self.format(p) for p in prompts], padding="longest", max_length=self.max_length,
                               truncation=True, return_tensors="pt").to(self.model.device)
        out = self.model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        return out.hidden_states[-2], batch.attention_mask.bool()

    def unused_parameters(self) -> list[nn.Parameter]:
        """The last decoder layer and the final norm come after the penultimate state: never used."""
        return [*self.model.layers[-1].parameters(), *self.model.norm.parameters()]


def gemma2_text_model(overrides: dict, tokenizer) -> nn.Module:
    from transformers import Gemma2Config, Gemma2Model

    config = {**architecture_config("gemma2_text_encoder"), **overrides}
    config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return Gemma2Model(Gemma2Config(**config))


def maybe_no_grad(frozen: bool):
    return torch.no_grad() if frozen else torch.enable_grad()
