"""The metrics an evaluation can ask for by name: what each needs, how it is built, how a batch reaches it.

Each entry's `check` runs before any checkpoint is loaded (files exist, model names are timm's, enough
images for KID); `build` creates the metric once for the whole evaluation (models load once); `feed` gives it
one batch of generated (N, 3, H, W) uint8 images with their prompts. Settings arrive as a typed
`MetricSettings`, never as the whole config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torchmetrics import Metric

from illustrious.errors import ConfigError


@dataclass(frozen=True)
class MetricSettings:
    feature_model: str | None = None
    feature_weights: str | None = None
    feature_image_size: int | None = None
    reference_images: str | None = None
    kid_subset_size: int = 50
    kid_subsets: int = 100
    clip_model: str | None = None
    ccip_model: str | None = None
    ccip_weights: str | None = None
    ccip_image_size: int | None = None
    ccip_references: str | None = None
    batch_size: int = 32


@dataclass(frozen=True)
class MetricChoice:
    check: Callable[[MetricSettings, list[str], int], None]  # (settings, prompts, images per checkpoint)
    build: Callable[[MetricSettings], Metric]
    feed: Callable[[Metric, Tensor, list[str]], None]


def _nothing(settings, prompts, n) -> None:
    return None


def _need(value, key: str, example: str, metric: str) -> None:
    if value is None:
        raise ConfigError(f"metrics={metric} needs {key}, e.g. {key}={example}")


def _check_shapes(settings, prompts, n) -> None:
    from illustrious.eval.metrics.shapes import parse_layout

    others = [p for p in prompts if parse_layout(p) is None]
    if others:
        raise ConfigError(f"metrics=shapes needs shapes prompts ('A red circle on the left, on a black "
                          f"background.'); {len(others)} prompt(s) are not, e.g. {others[0]!r}.")


def _check_features(settings: MetricSettings, metric: str) -> None:
    from illustrious.eval.metrics.distribution import reference_files
    from illustrious.eval.metrics.embedder import check_model_name, check_weights_file

    _need(settings.feature_model, "feature_model.name", "inception_v3", metric)
    _need(settings.feature_weights, "feature_model.weights", "/models/inception_v3.safetensors", metric)
    _need(settings.reference_images, "reference_images", "/data/real_images", metric)
    check_model_name(settings.feature_model, "feature_model.name")
    check_weights_file(settings.feature_weights, "feature_model.weights")
    reference_files(settings.reference_images)


def _check_fid(settings, prompts, n) -> None:
    _check_features(settings, "fid")
    if n < 2:
        raise ConfigError(f"metrics=fid needs at least 2 images per checkpoint; {n} would be generated "
                          "(raise num_images or add prompts).")


def _check_kid(settings, prompts, n) -> None:
    from illustrious.eval.metrics.distribution import reference_files

    _check_features(settings, "kid")
    real = len(reference_files(settings.reference_images))
    if settings.kid_subset_size > min(n, real):
        raise ConfigError(f"kid_subset_size={settings.kid_subset_size}: must be at most the number of generated "
                          f"images per checkpoint ({n}) and of reference images ({real}), e.g. "
                          f"kid_subset_size={max(2, min(n, real))}")


def _check_clip(settings, prompts, n) -> None:
    from illustrious.eval.metrics.clip import check_clip_folder

    _need(settings.clip_model, "clip_model", "/models/clip-vit-large-patch14", "clip")
    check_clip_folder(settings.clip_model)


def _check_ccip(settings, prompts, n) -> None:
    from illustrious.eval.metrics.character import reference_folders
    from illustrious.eval.metrics.embedder import check_model_name, check_weights_file

    _need(settings.ccip_model, "ccip.model_name", "caformer_s36", "ccip")
    _need(settings.ccip_weights, "ccip.weights", "/models/ccip.safetensors", "ccip")
    _need(settings.ccip_references, "ccip.references", "/data/characters", "ccip")
    check_model_name(settings.ccip_model, "ccip.model_name")
    check_weights_file(settings.ccip_weights, "ccip.weights")
    reference_folders(settings.ccip_references, "ccip.references")


def _feature_model(settings: MetricSettings):
    from illustrious.eval.metrics.embedder import TimmEmbedder

    return TimmEmbedder(settings.feature_model, settings.feature_weights, settings.feature_image_size)


def _build_fid(settings: MetricSettings) -> Metric:
    from illustrious.eval.metrics.distribution import add_real_images, fid, reference_files

    metric = fid(_feature_model(settings))
    add_real_images(metric, reference_files(settings.reference_images), settings.batch_size)
    return metric


def _build_kid(settings: MetricSettings) -> Metric:
    from illustrious.eval.metrics.distribution import add_real_images, kid, reference_files

    metric = kid(_feature_model(settings), settings.kid_subset_size, settings.kid_subsets)
    add_real_images(metric, reference_files(settings.reference_images), settings.batch_size)
    return metric


def _build_clip(settings: MetricSettings) -> Metric:
    from illustrious.eval.metrics.clip import LocalCLIPScore

    return LocalCLIPScore(Path(settings.clip_model))


def _build_ccip(settings: MetricSettings) -> Metric:
    from illustrious.eval.metrics.character import CharacterSimilarity
    from illustrious.eval.metrics.embedder import TimmEmbedder

    embedder = TimmEmbedder(settings.ccip_model, settings.ccip_weights, settings.ccip_image_size)
    return CharacterSimilarity.from_folder(embedder, settings.ccip_references)


def _build(name: str) -> Callable[[MetricSettings], Metric]:
    def build(settings: MetricSettings) -> Metric:
        from illustrious.eval import metrics

        return getattr(metrics, name)()
    return build


def _images_only(metric: Metric, images: Tensor, prompts: list[str]) -> None:
    metric.update(images)


def _with_prompts(metric: Metric, images: Tensor, prompts: list[str]) -> None:
    metric.update(images, prompts)


def _generated(metric: Metric, images: Tensor, prompts: list[str]) -> None:
    metric.update(images, real=False)


METRICS: dict[str, MetricChoice] = {
    "shapes": MetricChoice(_check_shapes, _build("ShapesJudge"), _with_prompts),
    "luminance": MetricChoice(_nothing, _build("Luminance"), _images_only),
    "colour": MetricChoice(_nothing, _build("ColourStatistics"), _images_only),
    "fid": MetricChoice(_check_fid, _build_fid, _generated),
    "kid": MetricChoice(_check_kid, _build_kid, _generated),
    "clip": MetricChoice(_check_clip, _build_clip, _with_prompts),
    "ccip": MetricChoice(_check_ccip, _build_ccip, _with_prompts),
}


def flatten(name: str, value) -> dict[str, float]:
    """A metric's `compute()` as table columns: a tensor -> `name`; a (mean, std) pair (KID) -> `name`,
    `name_std`; a dict -> `name/key`. Counts stay whole numbers."""
    def number(v) -> float | int:
        return v.item() if hasattr(v, "item") else v

    if isinstance(value, dict):
        return {f"{name}/{k}": number(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {name: number(value[0]), f"{name}_std": number(value[1])}
    return {name: number(value)}
