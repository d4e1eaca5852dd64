"""The clean estimate along a sampling trajectory, its mean colour and low-frequency energy per step.

This is how the Illustrious v3.0-vpred colour collapse was diagnosed: if the predicted x0 at the noisy
steps already has the wrong mean colour or no large-scale contrast, later steps cannot recover it.
`TrajectoryRecorder` is a sampler callback (`generate(..., callback=recorder)`); `trajectory_metrics` and
`plot_trajectory` turn what it kept into numbers and a figure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def mean_colour(pixels: Tensor) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3) mean R, G, B in [0, 1]."""
    return (pixels.float().mean(dim=(-2, -1)) + 1) / 2


def luminance(pixels: Tensor) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N,) mean Rec. 709 luma in [0, 1]."""
    r, g, b = mean_colour(pixels).unbind(-1)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def low_frequency_energy(pixels: Tensor, fraction: float = 0.25) -> Tensor:
    """(N, C, H, W) -> (N,): power per pixel (Parseval-normalised) at spatial frequencies 0 < |f| <= fraction *
    Nyquist, averaged over channels, of the image in [0, 1]. The mean colour (|f| = 0) is left out: it is
    reported by `mean_colour`; this measures large-scale contrast and structure."""
    x = (pixels.float() + 1) / 2
    h, w = x.shape[-2:]
    spectrum = torch.fft.fft2(x).abs().pow(2) / (h * w) ** 2  # sums to mean(x^2) over all frequencies
    fy, fx = torch.fft.fftfreq(h).abs(), torch.fft.fftfreq(w).abs()  # cycles per pixel, Nyquist = 0.5
    radius = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()
    band = (radius > 0) & (radius <= 0.5 * fraction)
    return spectrum[..., band].sum(-1).mean(-1)


class TrajectoryRecorder:
    """Sampler callback keeping the decoded clean estimate (pixels) at every step, for every image.

    `decode` maps latents to pixels in [-1, 1] (a backbone's `decode`). Works across `generate`'s batches.
    """

    def __init__(self, decode: Callable[[Tensor], Tensor]):
        self.decode = decode
        self._steps: dict[int, dict] = {}

    def __call__(self, info: dict) -> None:
        step = self._steps.setdefault(int(info["i"]), {"t": float(info["t"]), "chunks": {}})
        step["chunks"][int(info.get("start", 0))] = self.decode(info["denoised"]).float().cpu()

    @property
    def times(self) -> list[float]:
        return [self._steps[i]["t"] for i in sorted(self._steps)]

    def pixels(self) -> Tensor:
        """(steps, N, 3, H, W): the clean estimate at every step."""
        per_step = []
        for i in sorted(self._steps):
            chunks = self._steps[i]["chunks"]
            per_step.append(torch.cat([chunks[start] for start in sorted(chunks)]))
        return torch.stack(per_step)


def trajectory_metrics(recorder: TrajectoryRecorder, fraction: float = 0.25) -> dict:
    """Per step and image: t, mean colour (R, G, B in [0, 1]), luminance and low-frequency energy."""
    pixels = recorder.pixels()
    return {
        "t": recorder.times,
        "mean_colour": [mean_colour(p).tolist() for p in pixels],
        "luminance": [luminance(p).tolist() for p in pixels],
        "low_frequency_energy": [low_frequency_energy(p, fraction).tolist() for p in pixels],
        "low_frequency_fraction_of_nyquist": fraction,
    }


def plot_trajectory(recorder: TrajectoryRecorder, index: int, path: str | Path, title: str = "",
                    max_thumbnails: int = 10) -> Path:
    """One image's trajectory: thumbnails of the clean estimate, then mean colour and low-frequency energy
    against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = recorder.pixels()[:, index]  # (steps, 3, H, W)
    steps = len(pixels)
    shown = np.unique(np.linspace(0, steps - 1, min(max_thumbnails, steps)).round().astype(int))
    colour = mean_colour(pixels).numpy()
    energy = low_frequency_energy(pixels).numpy()
    times = recorder.times

    fig = plt.figure(figsize=(max(8, 1.2 * len(shown)), 6.5))
    columns = max(len(shown), 2)
    grid = fig.add_gridspec(2, columns, height_ratios=[1, 2.2])
    for col, i in enumerate(shown):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(((pixels[i].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), interpolation="nearest")
        ax.set_title(f"step {i}\nt={times[i]:.3f}", fontsize=7)
        ax.axis("off")
    half = columns // 2
    ax_colour = fig.add_subplot(grid[1, :half])
    for c, name in enumerate(("red", "green", "blue")):
        ax_colour.plot(colour[:, c], color=name, marker=".", label=name)
    ax_colour.set_xlabel("sampling step")
    ax_colour.set_ylabel("mean colour of predicted x0 (0-1)")
    ax_colour.set_ylim(-0.05, 1.05)
    ax_colour.legend(fontsize=7)
    ax_energy = fig.add_subplot(grid[1, half:])
    ax_energy.plot(energy, color="black", marker=".")
    ax_energy.set_xlabel("sampling step")
    ax_energy.set_ylabel("low-frequency energy of predicted x0")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["TrajectoryRecorder", "trajectory_metrics", "plot_trajectory", "mean_colour", "luminance",
           "low_frequency_energy"]
