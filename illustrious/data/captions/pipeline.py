"""`captions=illustrious` / `captions=bigasp`: a structured record -> the prompt one sample trains on this step.

One draw, all from the sample's (seed, epoch, index) RNG:
1. unconditional dropout: with `uncond_prob` the prompt is empty, or (a `uncond_quality_fraction` of those)
   only the quality string (the sample's score tag, else `quality_string`);
2. natural language or tags: a sample with a written caption uses it with `caption_prob` (bigASP 20 %),
   the quality string in front with the score section's probability;
3. tags: sections in `order` (people ||| character ||| copyright ||| rating ||| general ||| artist ||| score
   ||| year by default), each kept with `section_prob` (default 1), shuffled within if in `shuffle`, weak
   dropout per tag in `weak_dropout` sections, multi-level dropout over the tags of `droppable` sections
   (`protected` tags never dropped), paraphrasing; joined by ", " (or " " with `space_prob`);
4. register tokens appended with `register_prob`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from illustrious.data.captions.augment import (
    ILLUSTRIOUS_LEVELS,
    DropoutLevel,
    check_levels,
    level_keep,
    level_table,
    paraphrase,
    random_order,
    register_tokens,
    shuffled,
    weak_dropout,
)
from illustrious.data.captions.plain import draw_rng
from illustrious.data.captions.rng import CaptionKey
from illustrious.data.captions.source import caption_source, is_structured, named_captions
from illustrious.data.captions.tags import DEFAULT_ORDER, SECTIONS, prompt_word

RATING_TAGS = {"general": "general", "sensitive": "sensitive", "questionable": "nsfw", "explicit": "explicit"}


def probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"captions.{name} must be in [0, 1], got {value}")
    return float(value)


class TagCaptions:
    def __init__(self, order: Sequence[str] = DEFAULT_ORDER, shuffle: Sequence[str] = ("character", "copyright",
                 "general", "artist", "control"), droppable: Sequence[str] = ("general",),
                 dropout_levels: Sequence[Mapping | DropoutLevel] = ILLUSTRIOUS_LEVELS,
                 protected: Sequence[str] = (), weak_dropout: Mapping[str, float] | None = None,
                 section_prob: Mapping[str, float] | None = None, paraphrases: Mapping[str, Sequence[str]] | None = None,
                 paraphrase_prob: float = 0.0, space_prob: float = 0.0, caption_prob: float = 0.0,
                 register_prob: float = 0.0, register_count: Sequence[int] = (1, 2), register_length: Sequence[int] = (4, 8),
                 uncond_prob: float = 0.0, uncond_quality_fraction: float = 0.0, quality_string: str = "",
                 rating_tags: Mapping[str, str] | None = None):
        unknown = sorted({*order, *shuffle, *droppable, *(weak_dropout or {}), *(section_prob or {})} - set(SECTIONS))
        if unknown:
            raise ValueError(f"captions: unknown section(s) {unknown}; sections are {list(SECTIONS)}")
        self.order, self.shuffle, self.droppable = tuple(order), frozenset(shuffle), frozenset(droppable)
        self.levels = tuple(lv if isinstance(lv, DropoutLevel) else DropoutLevel(**lv) for lv in dropout_levels)
        check_levels(self.levels)
        self.protected = frozenset(prompt_word(t) for t in protected)
        self.weak = {k: probability(f"weak_dropout.{k}", v) for k, v in (weak_dropout or {}).items()}
        self.section_prob = {k: probability(f"section_prob.{k}", v) for k, v in (section_prob or {}).items()}
        self.paraphrases = {prompt_word(k): [str(x) for x in v] for k, v in (paraphrases or {}).items()}
        self.paraphrase_prob = probability("paraphrase_prob", paraphrase_prob)
        self.space_prob = probability("space_prob", space_prob)
        self.caption_prob = probability("caption_prob", caption_prob)
        self.register_prob = probability("register_prob", register_prob)
        self.register_count, self.register_length = tuple(register_count), tuple(register_length)
        if not (0 <= self.register_count[0] <= self.register_count[1] and 1 <= self.register_length[0] <= self.register_length[1]):
            raise ValueError(f"captions.register_count {register_count} / register_length {register_length}: [low, high] ranges")
        self.uncond_prob = probability("uncond_prob", uncond_prob)
        self.uncond_quality_fraction = probability("uncond_quality_fraction", uncond_quality_fraction)
        self.quality_string = quality_string
        self.rating_tags = dict(RATING_TAGS if rating_tags is None else rating_tags)
        self._rng = random.Random()  # reseeded per draw from its key (no allocation per caption)
        self._steps = tuple(SectionStep(name, DERIVED.get(name, ""), self.section_prob.get(name, 1.0),
                                        self.weak.get(name, 0.0), name in self.shuffle, name in self.droppable)
                            for name in self.order)
        self._levels = level_table(self.levels)
        # whether two draws of one sample may differ (text-embedding caches need to know)
        self.augments = bool(self.shuffle or any(lv.p for lv in self.levels) or self.weak or self.paraphrase_prob
                             or self.caption_prob or self.register_prob or self.uncond_prob or self.space_prob
                             or any(p < 1 for p in self.section_prob.values()))

    # -- one draw ----------------------------------------------------------------------------------------
    def __call__(self, source, key: CaptionKey | random.Random | None = None) -> str:
        rng = draw_rng(key, self._rng)
        record = source if type(source) is dict and "sections" in source else structured(source)
        draw = rng.random
        quality = record["score_tag"] or self.quality_string
        if self.uncond_prob and draw() < self.uncond_prob:
            return quality if quality and draw() < self.uncond_quality_fraction else ""
        caption = record["caption"]
        if caption and (not self.has_tags(record) or (self.caption_prob and draw() < self.caption_prob)):
            text = caption
            if quality and self.keeps("score", rng):
                text = f"{quality}, {text}"
        else:
            text = self.tag_prompt(record, rng)
        if self.register_prob and draw() < self.register_prob:
            text = " ".join([text, *register_tokens(rng, self.register_count, self.register_length)]).strip()
        return text

    def keeps(self, section: str, rng: random.Random) -> bool:
        p = self.section_prob.get(section, 1.0)
        return p >= 1.0 or rng.random() < p

    def derived(self, record: Mapping, name: str, field: str) -> list[str]:
        """A section made from the record's rating or derived tags (`DERIVED`)."""
        if name == "control":
            return record[field] or []
        tag = self.rating_tags.get(record[field] or "", "") if name == "rating" else record[field]
        return [tag] if tag else []

    def has_tags(self, record: Mapping) -> bool:
        """Whether any section has a tag (a record's own section named like a derived one is replaced by it)."""
        own = record["sections"]
        if own.keys().isdisjoint(DERIVED) and any(own.values()):  # (the usual record: no section to replace)
            return True
        return (any(own[name] for name in own.keys() - DERIVED.keys())
                or any(self.derived(record, name, field) for name, field in DERIVED.items()))

    def tag_prompt(self, record: Mapping, rng: random.Random) -> str:
        draw = rng.random
        own = record["sections"]
        words: list[str] = []  # the prompt's words, section after section
        pooled: list[tuple[int, int, bool]] = []  # (start, end, shuffled) of the droppable sections in `words`
        rating_tags = self.rating_tags
        for name, field, keep_prob, weak, shuffle, droppable in self._steps:
            if not field:
                section = own.get(name)
            elif name == "control":
                section = record[field]
            else:  # one tag (`derived`, inlined: this runs for every step of every draw)
                tag = rating_tags.get(record[field] or "", "") if name == "rating" else record[field]
                section = [tag] if tag else None
            if not section or (keep_prob < 1.0 and draw() >= keep_prob):
                continue
            if weak:  # one draw per tag; a lone name (the usual character or artist) without building a list
                section = (section if draw() >= weak else []) if len(section) == 1 else weak_dropout(section, weak, rng)
            if shuffle and len(section) > 1:
                section = shuffled(section, rng)
            if droppable:
                pooled.append((len(words), len(words) + len(section), shuffle))
            words += section
        if self.levels:
            self.multi_level_dropout(words, pooled, rng)
        words = paraphrase(words, self.paraphrases, self.paraphrase_prob, rng)
        sep = " " if self.space_prob and draw() < self.space_prob else ", "
        return sep.join(words)

    def multi_level_dropout(self, words: list[str], pooled: list[tuple[int, int, bool]], rng: random.Random) -> None:
        """Keep a level's share of the droppable, unprotected tags (pooled over the droppable sections), in place."""
        protected = self.protected
        if len(pooled) == 1 and not protected:  # the usual case: one droppable section, nothing protected
            (start, end, is_shuffled), = pooled
            n = end - start
            keep = level_keep(n, self._levels, rng.random())
            if keep >= n:
                return
            if is_shuffled:  # already in uniform random order: its first `keep` are a uniform subset
                del words[start + keep:end]
                return
            slots = range(start, end)
        else:
            # droppable positions in `words`, section by section (protected tags are never candidates)
            slots = [j for start, end, _ in pooled for j in range(start, end) if words[j] not in protected]
            n = len(slots)
            keep = level_keep(n, self._levels, rng.random())
            if keep >= n:
                return
        gone = {slots[i] for i in random_order(n, rng)[keep:]}
        words[:] = [w for j, w in enumerate(words) if j not in gone]


# sections made from a record's other fields -> that field
DERIVED = {"rating": "rating", "score": "score_tag", "year": "year_tag", "control": "control_tags"}


class SectionStep(NamedTuple):
    """How one section of `order` is drawn, resolved from the settings once (not looked up per draw)."""

    name: str
    field: str  # the record field of a derived section (DERIVED), "" for the record's own sections
    keep_prob: float  # section_prob (1: kept without a draw)
    weak: float  # per-tag dropout rate (0: no draws)
    shuffle: bool
    droppable: bool


def structured(source) -> dict:
    """Any caption source as a structured record (strings become general tags / a written caption)."""
    if is_structured(source):
        return source
    named = named_captions(source)
    tags = named.get("tags", "")
    caption = named.get("sentence") or named.get("caption") or next((v for k, v in named.items() if k != "tags"), None)
    return caption_source({"general": [t.strip() for t in tags.split(",") if t.strip()]}, caption=caption)
