"""Control tokens from image statistics (Illustrious 3.5): measured per image, binned into four levels by
thresholds fitted on the dataset's own percentiles (25/50/75 %), written down beside the manifest.

Statistics of an 8-bit RGB image (downscaled by the caller), all on a 0-255 scale unless noted:
- brightness: mean luma (Rec. 601 Y);  contrast: standard deviation of luma (RMS contrast);
- sharpness: variance of the 4-neighbour Laplacian of luma;
- dynamic colours: entropy (bits) of the hue histogram (36 bins) weighted by saturation, i.e. how many
  distinct hues carry colour (our definition);
- colourfulness: Hasler & Suesstrunk (2003), sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2);
- saturation: mean HSV saturation; saturation_spread its standard deviation (for the 3.5 rule).
The 3.5 write-up's colourfulness rule (mean saturation above 120 with a spread below 50 -> vibrant) is
available instead of the fitted colourfulness levels (`colorfulness_rule=true`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

STATISTICS = ("contrast", "brightness", "sharpness", "dynamic_colors", "colorfulness", "saturation")
LEVEL_TAGS = {
    "contrast": ("very low contrast", "low contrast", "high contrast", "very high contrast"),
    "brightness": ("very dark", "dark", "bright", "very bright"),
    "sharpness": ("very soft focus", "soft focus", "sharp focus", "very sharp focus"),
    "dynamic_colors": ("limited palette", "narrow palette", "wide palette", "very wide palette"),
    "colorfulness": ("muted colors", "soft colors", "vibrant colors", "very vibrant colors"),
    "saturation": ("desaturated", "low saturation", "high saturation", "very high saturation"),
}
QUANTILES = (25.0, 50.0, 75.0)
RULE_SATURATION, RULE_SPREAD = 120.0, 50.0


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """(H, W, 3) uint8 -> the statistics above."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    lap = (4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:])
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0) * 255.0
    rg, yb = r - g, 0.5 * (r + g) - b
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "sharpness": float(lap.var()) if lap.size else 0.0,
        "dynamic_colors": hue_entropy(x, hi, lo, sat),
        "colorfulness": float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
        "saturation": float(sat.mean()),
        "saturation_spread": float(sat.std()),
    }


def hue_entropy(x: np.ndarray, hi: np.ndarray, lo: np.ndarray, sat: np.ndarray, bins: int = 36) -> float:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    delta = np.maximum(hi - lo, 1e-6)
    hue = np.where(hi == r, ((g - b) / delta) % 6, np.where(hi == g, (b - r) / delta + 2, (r - g) / delta + 4)) / 6
    hist = np.bincount(np.minimum((hue * bins).astype(np.int64), bins - 1).ravel(), weights=sat.ravel(),
                       minlength=bins)
    total = hist.sum()
    if total <= 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum())


def fit_thresholds(stats: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """Per statistic, the 25/50/75 % percentiles over the dataset (NaN ignored)."""
    fitted = {}
    for name in STATISTICS:
        values = np.asarray(stats[name], dtype=np.float64)
        values = values[~np.isnan(values)]
        if not len(values):
            raise ValueError(f"No {name} values to fit control-token thresholds on.")
        fitted[name] = [float(v) for v in np.percentile(values, QUANTILES)]
    return fitted


def control_tags(stats: Mapping[str, float], thresholds: Mapping[str, Sequence[float]],
                 colorfulness_rule: bool = False) -> list[str]:
    tags = []
    for name in STATISTICS:
        if name == "colorfulness" and colorfulness_rule:
            if stats["saturation"] > RULE_SATURATION and stats["saturation_spread"] < RULE_SPREAD:
                tags.append(LEVEL_TAGS["colorfulness"][2])
            continue
        level = int(np.searchsorted(np.asarray(thresholds[name]), stats[name], side="right"))
        tags.append(LEVEL_TAGS[name][level])
    return tags


def write_thresholds(path: Path, thresholds: Mapping[str, Sequence[float]], colorfulness_rule: bool) -> None:
    """The fitted thresholds, human-readable, with the tag of each level (written atomically)."""
    doc = {"quantiles": list(QUANTILES), "colorfulness_rule": colorfulness_rule,
           "rule": {"saturation_above": RULE_SATURATION, "spread_below": RULE_SPREAD},
           "statistics": {n: {"thresholds": list(thresholds[n]), "tags": list(LEVEL_TAGS[n])} for n in STATISTICS}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
