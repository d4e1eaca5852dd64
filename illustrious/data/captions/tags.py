"""Tag spelling and sections: Danbooru tags -> prompt words, grouped for the ordering schema.

Prompt spelling (the convention of Illustrious, NoobAI and Animagine): underscores become spaces except in
short emoticons (`^_^`, `o_o`), and parentheses are escaped (`\\(`, `\\)`) because prompt front-ends read
bare ones as weights: `hatsune_miku_(append)` -> `hatsune miku \\(append\\)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

# Danbooru's person-count tags: they lead the prompt (`1girl, solo, ...`) in Illustrious' order.
PEOPLE = re.compile(r"(\d+\+?(girl|boy|other)s?|multiple_(girls|boys|others)|solo|solo_focus|no_humans)")
SECTIONS = ("people", "character", "copyright", "rating", "general", "artist", "meta", "score", "year", "control")
UNESCAPED_PAREN = re.compile(r"(?<!\\)([()])")
DEFAULT_ORDER = ("people", "character", "copyright", "rating", "general", "artist", "score", "year")


@lru_cache(maxsize=1 << 18)
def prompt_word(tag: str) -> str:
    """A Danbooru tag as it is written in a prompt."""
    word = tag.strip()
    if len(word) > 3:
        word = word.replace("_", " ")
    return UNESCAPED_PAREN.sub(r"\\\1", word) if "(" in word or ")" in word else word


@lru_cache(maxsize=1 << 16)
def is_people(tag: str) -> bool:
    return PEOPLE.fullmatch(tag) is not None


def split_people(general: Sequence[str]) -> tuple[list[str], list[str]]:
    """(person-count tags, the other general tags), order kept."""
    people, rest = [], []
    for tag in general:
        (people if is_people(tag) else rest).append(tag)
    return people, rest


_PROMPT_PEOPLE: dict[str, tuple[str, bool]] = {}  # tag -> (prompt word, is a person-count tag)


def split_prompt_people(general: Sequence[str]) -> tuple[list[str], list[str]]:
    """`split_people` in prompt spelling, with one dict lookup per tag (it runs for every sample load)."""
    people, rest = [], []
    info = _PROMPT_PEOPLE.get
    for tag in general:
        hit = info(tag)
        if hit is None:
            hit = _PROMPT_PEOPLE[tag] = (prompt_word(tag), is_people(tag))
            if len(_PROMPT_PEOPLE) > 1 << 20:  # a bound for endless vocabularies (register-like junk tags)
                _PROMPT_PEOPLE.clear()
        (people if hit[1] else rest).append(hit[0])
    return people, rest
