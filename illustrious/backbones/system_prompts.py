"""Lumina-2's system prompts: Gemma reads `<system prompt> <Prompt Start> <prompt>`.

Choices by name (`backbone.system_prompt=dense_caption`) or any custom sentence:
- `diffusers`: Lumina2Pipeline's default (the original repository's `real` system type);
- `dense_caption` / `user_prompt`: the two the Lumina-Image-2.0 README recommends (`align` / `base` in its
  sample.py) for long descriptive captions and for short user prompts;
- `tags`: ours, for Danbooru-style tag captions (no published model was trained with it: fine-tune first);
- `none`: the bare prompt.

An empty prompt is always encoded bare: a dropped caption in Lumina-2's training (finetune.py empties the
whole text, system prompt included) and the default empty negative prompt in sampling (diffusers and the
original sample.py). A non-empty negative prompt gets the system prompt, as the original sample.py does
(diffusers sends it bare); one rule for every prompt keeps training and sampling alike.
"""

from __future__ import annotations

import re

from illustrious.errors import ConfigError

PROMPT_START = " <Prompt Start> "

SYSTEM_PROMPTS = {
    "diffusers": "You are an assistant designed to generate superior images with the superior degree of image-text "
                 "alignment based on textual prompts or user prompts.",
    "dense_caption": "You are an assistant designed to generate high-quality images with the highest degree of "
                     "image-text alignment based on textual prompts.",
    "user_prompt": "You are an assistant designed to generate high-quality images based on user prompts.",
    "tags": "You are an assistant designed to generate high-quality anime illustrations based on Danbooru-style "
            "tags.",
    "none": "",
}
NAME = re.compile(r"[a-z_]+")


def resolve_system_prompt(choice: str | None) -> str:
    """A name from SYSTEM_PROMPTS, a custom sentence, or ""/None for none."""
    if not choice:
        return ""
    if choice in SYSTEM_PROMPTS:
        return SYSTEM_PROMPTS[choice]
    if NAME.fullmatch(choice):  # a mistyped name must not silently become the system prompt
        raise ConfigError(f"backbone.system_prompt={choice!r} is not one of {sorted(SYSTEM_PROMPTS)}; "
                          "give one of those names or a whole sentence as a custom system prompt.")
    return choice


def with_system_prompt(system_prompt: str, prompt: str) -> str:
    """What Gemma reads for `prompt`: empty (or blank) prompts stay empty (see the module docstring)."""
    if not prompt.strip():
        return ""
    return f"{system_prompt}{PROMPT_START}{prompt}" if system_prompt else prompt
