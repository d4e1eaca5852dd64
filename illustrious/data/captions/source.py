"""What the caption pipeline reads from a sample: its `captions` entry.

Either a plain string (the caption as is), a dict of named caption strings (`{"tags": "...", "sentence":
"..."}`: the synthetic shapes and today's folder samples), or a structured record built by `caption_source`:
tags by sidecar category, rating, a natural-language caption and the derived tags of the annotation command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from illustrious.data.captions.tags import prompt_word, split_prompt_people


def caption_source(tags: Mapping[str, Sequence[str]], rating: str | None = None, caption: str | None = None,
                   score_tag: str | None = None, year_tag: str | None = None,
                   control_tags: Sequence[str] | None = None, caption_is_tags: bool = False,
                   variants: Mapping[str, str] | str | None = None) -> dict:
    """A structured record from raw Danbooru tags by category (underscores kept) and derived tags.

    Tags are put in prompt spelling and person-count tags moved from general to `people` here, once per
    sample load, so that each draw only reorders and drops. `caption_is_tags`: a caption that is a
    comma-separated tag list (a folder's .txt under `txt_style: tags`) becomes the general tags when the
    sample has no tags of its own. `variants`: the named caption strings `captions=plain` picks from.
    """
    if caption_is_tags and caption and not any(tags.get(c) for c in ("character", "copyright", "artist", "general")):
        tags = {**tags, "general": [t.strip() for t in caption.split(",") if t.strip()]}
        caption = None
    people, general = split_prompt_people(tags.get("general") or ())
    sections = {"people": people, "general": general}
    for c in ("character", "copyright", "artist", "meta"):
        names = tags.get(c)
        sections[c] = list(map(prompt_word, names)) if names else []
    return {"sections": sections, "rating": rating, "caption": caption or None, "score_tag": score_tag or None,
            "year_tag": year_tag or None, "control_tags": list(control_tags or ()), "variants": variants}


def is_structured(source) -> bool:
    # plain dicts first: an isinstance check against the Mapping ABC costs more than the rest of this test,
    # and the caption pipeline asks it on every draw
    return (type(source) is dict or isinstance(source, Mapping)) and "sections" in source


def named_captions(source) -> dict[str, str]:
    """Any source as named caption strings (for pipelines that only pick among strings)."""
    if isinstance(source, str):
        return {"caption": source} if source else {}
    if is_structured(source) and source.get("variants") is not None:
        return named_captions(source["variants"])
    if is_structured(source):
        sections = source["sections"]
        words = [w for c in ("people", "character", "copyright", "artist", "general") for w in sections.get(c) or ()]
        named = {"tags": ", ".join(words)} if words else {}
        if source.get("caption"):
            named["sentence"] = source["caption"]
        return named
    return {k: v for k, v in source.items() if isinstance(v, str) and v}


def record_from_row(row: Mapping, txt_style: str = "tags", variants: Mapping[str, str] | str | None = None) -> dict:
    """A manifest row (with the annotation columns where annotated) -> the sample's caption record."""
    tags = {c[len("tags_"):]: row[c] or [] for c in row if c.startswith("tags_")}
    return caption_source(tags, rating=row.get("rating"), caption=row.get("caption"), score_tag=row.get("score_tag"),
                          year_tag=row.get("year_tag"), control_tags=row.get("control_tags"),
                          caption_is_tags=txt_style == "tags", variants=variants)
