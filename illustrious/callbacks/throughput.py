"""Lightning's ThroughputMonitor, told how to count the images in our batches."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def batch_size(batch: dict) -> int:
    return len(batch["captions"])


class SamplesPerSecond(ThroughputMonitor):
    def __init__(self, window_size: int = 20):
        super().__init__(batch_size_fn=batch_size, window_size=window_size)
