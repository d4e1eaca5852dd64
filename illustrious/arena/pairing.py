"""Which images meet in a match. Every match shows images for one prompt and one seed from distinct
checkpoints, so only the checkpoint differs; the slots are shuffled so position says nothing.

Kinds (the paper's section 5):
- `fixed`: a fixed-characteristics duel (prompts of set "fixed" or no set); the voter may call a draw.
- `free`:  a free-prompt duel (prompts of set "free" or no set); the voter must choose.
- `ffa`:   a free-for-all of `ffa_size` (4) checkpoints; the voter picks the best or ranks all.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from illustrious.arena.catalog import Catalog, Image
from illustrious.errors import ConfigError

KINDS = ("fixed", "free", "ffa")
DRAWS_ALLOWED = {"fixed": True, "free": False, "ffa": False}


@dataclass(frozen=True)
class Proposal:
    kind: str
    prompt_index: int
    seed: int
    images: tuple[Image, ...]  # slot order as shown


class Pairing:
    def __init__(self, catalog: Catalog, kinds: list[str] | tuple[str, ...] = KINDS, ffa_size: int = 4,
                 seed: int | None = None):
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ConfigError(f"kinds={list(kinds)}: choose from {list(KINDS)}.")
        if ffa_size < 3:
            raise ConfigError(f"ffa_size={ffa_size}: a free-for-all needs at least 3 checkpoints (2 is a duel).")
        self.catalog = catalog
        self.ffa_size = ffa_size
        self.rng = random.Random(seed)
        self._lock = threading.Lock()  # the server proposes from several threads
        groups = catalog.groups()
        self.candidates = {kind: [key for key, images in groups.items()
                                  if len(images) >= self.size(kind) and self._prompt_fits(kind, key[0])]
                           for kind in kinds}
        self.groups = groups
        self.kinds = tuple(k for k in kinds if self.candidates[k])
        if not self.kinds:
            raise ConfigError(f"images={catalog.root}: no prompt and seed has images from enough checkpoints for "
                              f"any of kinds={list(kinds)} (duels need 2, free-for-alls {ffa_size}).")

    def size(self, kind: str) -> int:
        return self.ffa_size if kind == "ffa" else 2

    def _prompt_fits(self, kind: str, prompt_index: int) -> bool:
        prompt_set = self.catalog.prompts[prompt_index].set
        return prompt_set is None or kind == "ffa" or prompt_set == kind

    def propose(self, kind: str) -> Proposal:
        if kind not in self.kinds:
            raise KeyError(kind)
        with self._lock:
            prompt_index, seed = self.rng.choice(self.candidates[kind])
            images = self.rng.sample(self.groups[(prompt_index, seed)], self.size(kind))  # checkpoints and order
        return Proposal(kind, prompt_index, seed, tuple(images))
