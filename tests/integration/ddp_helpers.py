"""Test helpers imported by training subprocesses (`objective._target_=tests.integration.ddp_helpers....`)."""

from __future__ import annotations

import hashlib

import torch

from illustrious.objectives import FlowObjective


class SampleSeededFlow(FlowObjective):
    """Rectified flow whose noise and time for each sample follow from the sample's pixels and the step.

    A sample then gets the same draws whichever process trains it, so a DDP run and a single process with
    the same global batch compute the same losses and gradients (up to float summation order).
    """

    def __init__(self, **components):
        super().__init__(**components)
        self.step = 0
        self._t: torch.Tensor | None = None

    def sample_noise(self, x0, *, generator=None):
        self.step += 1
        noises, times = [], []
        for x in x0:
            key = torch.round(x.detach().float().cpu() * 255).to(torch.int32).numpy().tobytes()
            seed = int.from_bytes(hashlib.sha256(key + self.step.to_bytes(8, "little")).digest()[:7], "little")
            g = torch.Generator().manual_seed(seed)
            noises.append(torch.randn(x.shape, generator=g))
            times.append(torch.rand((), generator=g))
        self._t = torch.stack(times)
        return torch.stack(noises).to(x0)

    def sample_t(self, n, *, generator=None, image_seq_len=None, device=None, progress=None):
        assert self._t is not None and len(self._t) == n, "sample_noise runs first in the training step"
        return self._t.to(device)
