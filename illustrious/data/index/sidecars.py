"""Caption and metadata sidecars: `image.txt` (a caption) and `image.json` (tags by category and more).

JSON metadata is accepted in the shapes Danbooru-style datasets come in and normalised to one:
- a Danbooru post (`tag_string_character`, `tag_string_copyright`, `tag_string_artist`,
  `tag_string_general`, `tag_string_meta`, `rating`, `score`, `created_at`), as gallery-dl saves it;
- `{"tags": {"character": [...], "general": "a b c", ...}, "rating": ..., "score": ..., "created": ...}`,
  categories as lists or space-separated strings (other categories, e.g. e621's `species`, count as general);
- `{"tags": [...]}` or `{"tag_string": "..."}`: all tags general.
A `caption` string in the JSON is used when there is no .txt. Tags keep their Danbooru spelling
(underscores); `tags_caption` writes the default tag prompt from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TAG_CATEGORIES = ("character", "copyright", "artist", "general", "meta")
CAPTION_CATEGORIES = ("character", "copyright", "artist", "general")  # meta tags (absurdres, ...) are not prompts
RATINGS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}
DATE_KEYS = ("created_at", "created", "date")


class SidecarError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Metadata:
    caption: str | None = None
    tags: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in TAG_CATEGORIES})
    rating: str | None = None  # general / sensitive / questionable / explicit
    score: float | None = None
    created: str | None = None  # as the source wrote it (ISO 8601 for Danbooru)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SidecarError("sidecar_unreadable", f"{type(e).__name__}: {e}") from None


def read_caption(path: Path) -> str:
    """A .txt caption (UTF-8, BOM allowed), whitespace-trimmed; SidecarError if it is not text."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise SidecarError("caption_undecodable", f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_metadata(path: Path) -> Metadata:
    data = _read_bytes(path)
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError("json_broken", f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, Mapping):
        raise SidecarError("json_broken", f"expected a JSON object, got {type(obj).__name__}")
    try:
        return normalise(obj)
    except (TypeError, ValueError) as e:
        raise SidecarError("json_broken", f"unexpected structure: {e}") from None


def _tag_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    raise TypeError(f"tags must be a string or a list, got {type(value).__name__}")


def normalise(obj: Mapping) -> Metadata:
    meta = Metadata()
    tags = obj.get("tags")
    if isinstance(tags, Mapping):
        for category, value in tags.items():
            target = category if category in TAG_CATEGORIES else "general"
            meta.tags[target].extend(_tag_list(value))
    elif tags is not None:
        meta.tags["general"].extend(_tag_list(tags))
    for category in TAG_CATEGORIES:
        meta.tags[category].extend(_tag_list(obj.get(f"tag_string_{category}")))
        if category in obj and not isinstance(tags, Mapping):
            meta.tags[category].extend(_tag_list(obj[category]))
    if not any(meta.tags.values()):
        meta.tags["general"].extend(_tag_list(obj.get("tag_string")))
    meta.tags = {c: list(dict.fromkeys(v)) for c, v in meta.tags.items()}  # drop repeats, keep order

    caption = obj.get("caption")
    meta.caption = caption.strip() if isinstance(caption, str) and caption.strip() else None
    rating = obj.get("rating")
    if isinstance(rating, str) and rating.strip():
        rating = rating.strip().lower()
        meta.rating = RATINGS.get(rating[0], rating) if rating[0] in RATINGS else rating
    score = obj.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool):
        meta.score = float(score)
    elif isinstance(score, Mapping) and isinstance(score.get("total"), (int, float)):  # e621 style
        meta.score = float(score["total"])
    for key in DATE_KEYS:
        if isinstance(obj.get(key), str):
            meta.created = obj[key]
            break
    return meta


def tags_caption(tags: Mapping[str, list[str]]) -> str:
    """The default tag prompt: character, copyright, artist, general; underscores as spaces except in
    short emoticons such as ^_^ (a richer Illustrious caption pipeline can reorder from the categories)."""
    words = [t if len(t) <= 3 else t.replace("_", " ") for c in CAPTION_CATEGORIES for t in tags.get(c) or []]
    return ", ".join(words)
