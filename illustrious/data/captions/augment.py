"""Per-step tag augmentations as small pure functions of a list of prompt words and an RNG.

- multi-level dropout (Illustrious): with probability p_i keep `max(fraction_i * N, at_least_i)` of the N
  droppable tags (never more than N), otherwise keep all; defaults 30 %: max(30 % N, 10), 20 %: max(40 % N,
  15), 10 %: min(6, N), 4 %: min(4, N). `fraction * N` is rounded down.
- weak dropout: each tag of a section (character, artist names) dropped on its own at a low rate.
- paraphrasing: a tag with entries in a table is replaced by one of them at a rate ("1girl" -> "one girl").
- register tokens: random alphanumeric strings the model learns to ignore (they soak up attention that
  would otherwise land on padding; Illustrious appendix A.6).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat

ALPHANUMERIC = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class DropoutLevel:
    p: float  # probability of this level
    keep_fraction: float = 0.0
    keep_at_least: int = 0

    def keep(self, n: int) -> int:
        return min(n, max(int(self.keep_fraction * n), self.keep_at_least))


ILLUSTRIOUS_LEVELS = (DropoutLevel(0.30, 0.3, 10), DropoutLevel(0.20, 0.4, 15), DropoutLevel(0.10, 0.0, 6),
                      DropoutLevel(0.04, 0.0, 4))


def check_levels(levels: Sequence[DropoutLevel]) -> None:
    total = sum(level.p for level in levels)
    if any(level.p < 0 for level in levels) or total > 1 + 1e-9:
        raise ValueError(f"dropout level probabilities must be >= 0 and sum to at most 1, got {[lv.p for lv in levels]}")


def level_table(levels: Sequence[DropoutLevel]) -> tuple[tuple[float, float, int], ...]:
    """The levels as plain (p, keep_fraction, keep_at_least) tuples, resolved once for `level_keep` (per draw)."""
    return tuple((lv.p, lv.keep_fraction, lv.keep_at_least) for lv in levels)


def level_keep(n: int, table: Sequence[tuple[float, float, int]], u: float) -> int:
    """How many of n tags to keep, for a uniform draw u in [0, 1) (`table` from `level_table`; `DropoutLevel.keep`'s
    arithmetic, inlined: it runs on every draw)."""
    for p, fraction, at_least in table:
        if u < p:
            return min(n, max(int(fraction * n), at_least))
        u -= p
    return n


def draws(rng: random.Random) -> Iterator[float]:
    """`rng.random()` as an endless iterator, one value per `next` (drawn lazily, in C)."""
    return map(type(rng).random, repeat(rng))


def random_order(n: int, rng: random.Random) -> list[int]:
    """A uniform permutation of range(n), from n floats and one sort (several times faster than
    `random.shuffle`, whose per-element draws run in Python)."""
    # sorted() computes the keys in list order, so index i gets the i-th draw; all in C, no Python per element
    return sorted(range(n), key=partial(next, draws(rng)))


def shuffled(words: Sequence[str], rng: random.Random) -> list[str]:
    """`words` in `random_order` (the same draws, the same stable sort)."""
    return sorted(words, key=partial(next, draws(rng)))


def weak_dropout(words: list[str], p: float, rng: random.Random) -> list[str]:
    return [w for w in words if rng.random() >= p] if p > 0 else words


def paraphrase(words: list[str], table: Mapping[str, Sequence[str]], p: float, rng: random.Random) -> list[str]:
    if p <= 0 or not table:
        return words
    hits = table.keys() & words  # in C: one dict lookup per word, no set of the prompt built
    if not hits:
        return words
    out = words  # copied at the first replacement
    for w in sorted(hits, key=words.index) if len(hits) > 1 else hits:  # in prompt order: draws never follow set order
        if rng.random() < p:
            if out is words:
                out = words.copy()
            out[out.index(w)] = rng.choice(table[w])
    return out


def register_tokens(rng: random.Random, count: tuple[int, int], length: tuple[int, int]) -> list[str]:
    """Between count[0] and count[1] strings of length[0]..length[1] lowercase letters and digits."""
    return ["".join(rng.choices(ALPHANUMERIC, k=rng.randint(*length))) for _ in range(rng.randint(*count))]
