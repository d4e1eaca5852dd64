"""StepSeeds: every step's random draws (noise, timesteps, dropout) are a function of (seed, step, batch, rank).

Restoring the generators' states from a checkpoint is not enough for an exact resume: the loader fetches
the next batch before a step runs, and loader workers are reseeded whenever they start. Seeding torch,
numpy and Python's `random` at the start of every step, from the run's seed, the global step, the batch
index and the rank, makes a resumed run draw exactly what an uninterrupted one draws. (Data-side
randomness, caption choice and crops, is seeded per sample by the data modules.)

The generators' states (per rank) are also saved in checkpoints and restored, for anything that draws
between steps.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def step_seed(seed: int, step: int, batch_idx: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, batch_idx, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()),
              "python": list(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class StepSeeds(Callback):
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._restore: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = step_seed(self.seed, trainer.global_step, batch_idx, trainer.global_rank)
        torch.manual_seed(s)  # every device's generator
        np.random.seed(s % 2**32)
        random.seed(s)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restore is not None:
            set_rng_states(self._restore)
            self._restore = None

    def state_dict(self) -> dict:
        import torch.distributed as dist

        mine = rng_states()
        if dist.is_available() and dist.is_initialized():
            every = [None] * dist.get_world_size()
            dist.all_gather_object(every, mine)
        else:
            every = [mine]
        np_state = [s["numpy"] for s in every]
        for s in np_state:  # numpy's key array as plain ints (the checkpoint format stores plain values)
            s[1] = torch.from_numpy(np.asarray(s[1], dtype=np.int64))
        return {"seed": self.seed, "ranks": every}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks") or []
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # a different world size: ranks without a saved state are seeded by the step alone, which is exact
        self._restore = ranks[rank] if rank < len(ranks) else None
