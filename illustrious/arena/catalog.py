"""The arena's input: generated images per checkpoint for the same prompts and seeds.

Layout (what `illustrious.evaluate` writes, and what anyone can write by hand):

    <root>/prompts.json                          the prompts, by index (see read_prompts)
    <root>/<checkpoint_name>/<prompt_index>_<seed>.png     (.jpg, .jpeg, .webp also accepted)

`prompts.json` is a list whose i-th entry is prompt i: a string, or {"prompt": "...", "set": "fixed" | "free"}
to say which duels use it (fixed-characteristics prompts vs free prompts; a prompt without a set serves
both). {"prompts": [...]} is accepted too. Files that do not follow the layout are skipped and counted;
a symbolic link that leaves the root is skipped too, so the server only ever reads files inside the root.

The evaluate command's own output folder is read as it is: where `<root>/evaluation.json` exists (and no
prompts file is given), the images are `<root>/images/<checkpoint folder>/<j>-<seed>.png`, image j showing
prompt j // num_images of that file's "prompts" list (every prompt made num_images times, seed + j).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from illustrious.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_NAME = re.compile(r"^(?P<prompt>\d+)_(?P<seed>\d+)$")  # <prompt_index>_<seed>
EVALUATE_IMAGE_NAME = re.compile(r"^(?P<job>\d+)-(?P<seed>\d+)$")  # the evaluate command's <j>-<seed>
PROMPT_SETS = ("fixed", "free")
MAX_PROMPT_CHARS = 10_000


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    set: str | None  # "fixed", "free", or None (both)


@dataclass(frozen=True)
class Image:
    checkpoint: str
    prompt_index: int
    seed: int
    path: Path  # resolved, inside the catalog root


@dataclass
class Catalog:
    root: Path
    prompts: dict[int, Prompt]
    images: list[Image]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def checkpoints(self) -> list[str]:
        return sorted({image.checkpoint for image in self.images})

    def groups(self) -> dict[tuple[int, int], list[Image]]:
        """(prompt_index, seed) -> the images of every checkpoint that has one, by checkpoint name."""
        groups: dict[tuple[int, int], list[Image]] = defaultdict(list)
        for image in self.images:
            groups[(image.prompt_index, image.seed)].append(image)
        return {key: sorted(images, key=lambda i: i.checkpoint) for key, images in sorted(groups.items())}


def read_prompts(path: Path) -> dict[int, Prompt]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no prompts file. Write a JSON list of prompts (entry i is prompt i), or set "
                          "prompts=<file>.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); expected a list of prompts.") from None
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of prompts (or {{\"prompts\": [...]}}), got {type(data).__name__}.")
    prompts = {}
    for index, entry in enumerate(data):
        text, prompt_set = (entry, None) if isinstance(entry, str) else (None, None)
        if isinstance(entry, dict):
            text, prompt_set = entry.get("prompt"), entry.get("set")
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(f"{path}: entry {index} must be a string or {{\"prompt\": str, \"set\": ...}} "
                              f"(at most {MAX_PROMPT_CHARS} characters).")
        if prompt_set is not None and prompt_set not in PROMPT_SETS:
            raise ConfigError(f"{path}: entry {index} has set={prompt_set!r}; use one of {PROMPT_SETS} or leave it out.")
        prompts[index] = Prompt(index, text, prompt_set)
    return prompts


def read_evaluation(path: Path) -> tuple[dict[int, Prompt], int]:
    """The prompts and images per prompt of an evaluate command's evaluation.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        prompts, per_prompt = data["prompts"], data["num_images"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not an evaluation summary with 'prompts' and 'num_images' ({e}).") from None
    if (not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts)
            or isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1):
        raise ConfigError(f"{path}: 'prompts' must be a list of strings and 'num_images' a positive integer.")
    return {i: Prompt(i, text, None) for i, text in enumerate(prompts)}, per_prompt


def scan(root: str | Path, prompts_file: str | Path | None = None) -> Catalog:
    """Read the layout above. Raises ConfigError when the folder or prompts are missing or fewer than two
    checkpoints have images."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"images={root}: not a folder. Point it at <root>/<checkpoint>/<prompt_index>_<seed>.png.")
    root = root.resolve()
    if prompts_file is None and (root / "evaluation.json").is_file():
        prompts, per_prompt = read_evaluation(root / "evaluation.json")
        folders, pattern = root / "images", EVALUATE_IMAGE_NAME
        if not folders.is_dir():
            raise ConfigError(f"images={root}: has evaluation.json but no images/ folder of the evaluate command.")
    else:
        prompts = read_prompts(Path(prompts_file).expanduser() if prompts_file else root / "prompts.json")
        folders, pattern, per_prompt = root, IMAGE_NAME, None
    images, skipped = [], []
    for folder in sorted(p for p in folders.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.iterdir()):
            if file.name.startswith(".") or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = pattern.match(file.stem)
            resolved = file.resolve()
            if match is None:
                skipped.append((str(file), f"name is not {'<j>-<seed>' if per_prompt else '<prompt_index>_<seed>'}"))
                continue
            prompt_index = int(match["prompt"]) if per_prompt is None else int(match["job"]) // per_prompt
            if not resolved.is_relative_to(root) or not resolved.is_file():
                skipped.append((str(file), "links outside the images folder"))
            elif prompt_index not in prompts:
                skipped.append((str(file), f"prompt index {prompt_index} is not in the prompts file"))
            else:
                images.append(Image(folder.name, prompt_index, int(match["seed"]), resolved))
    catalog = Catalog(root, prompts, images, skipped)
    if len(catalog.checkpoints) < 2:
        raise ConfigError(f"images={root}: found images from {len(catalog.checkpoints)} checkpoint folder(s) "
                          f"({', '.join(catalog.checkpoints) or 'none'}); the arena needs at least two, laid out "
                          "as <root>/<checkpoint>/<prompt_index>_<seed>.png.")
    return catalog
