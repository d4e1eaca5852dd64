"""`illustrious-evaluate checkpoints=[a,b,...] prompts=prompts.txt [metrics=[...]]` (or `python -m
illustrious.evaluate`): the same prompts with the same seeds from every checkpoint, scored and compared.

Each checkpoint is rebuilt from its own stored run config (through `rebuild_run_config`, as the sample
command does: a crafted file cannot choose code) and samples the way its run recommends (its `sampling:`
block: sampler, steps, CFG, ...) unless the command line overrides a setting for all. Every setting, file and
model name is checked before the first checkpoint loads. Writes, atomically, under `out_dir`:

- `images/<nn>-<label>/<jjjjj>-<seed>.png`, with their settings in the PNG text chunks (as the sample command);
- `metrics.csv` and `metrics.md`: one row per checkpoint, its sampling settings and every metric's figures;
- `grid.png`: rows prompts (x num_images), columns checkpoints;
- `evaluation.json`: the same rows with the prompts and paths.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from illustrious.config import CONF_DIR
from illustrious.errors import ConfigError, reported_config_errors
from illustrious.weights.rebuild import config_dirs_of

log = logging.getLogger(__name__)


def listed(cfg: DictConfig, key: str, example: str) -> list[str]:
    value = cfg.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, ListConfig | list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}={OmegaConf.to_container(value) if isinstance(value, ListConfig) else value!r}: "
                          f"needs a list of strings, e.g. {key}={example}")
    return list(value)


def default_labels(paths: list[str]) -> list[str]:
    """The shortest path tails (suffix dropped) that tell the checkpoints apart."""
    parts = [Path(p).with_suffix("").parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise ConfigError("checkpoints: the same file is listed twice; give each once (or labels=[...]).")


def folder_name(index: int, label: str) -> str:
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def stored_run_config(path: str, allow_pickle: bool, config_dirs=None) -> DictConfig:
    """A checkpoint's run config, rebuilt (only) through `rebuild_run_config` from the file's metadata alone,
    without reading its weights, so every checkpoint is checked before the first one generates."""
    from illustrious.checkpoint_io import CheckpointError, load_checkpoint_file, read_structure
    from illustrious.weights.run_config import LEGACY_KEY, STORED_KEY, rebuild_run_config

    try:
        if Path(path).suffix == ".safetensors":
            checkpoint = read_structure(path)
        else:
            checkpoint = load_checkpoint_file(path, allow_pickle=allow_pickle)
    except CheckpointError as error:  # truncated, corrupted header, not a training checkpoint
        raise ConfigError(f"checkpoints: {path} cannot be read: {error}") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path}: its structure is malformed.")
    return rebuild_run_config({k: checkpoint[k] for k in (STORED_KEY, LEGACY_KEY) if k in checkpoint}, source=path,
                              config_dirs=config_dirs)


def check_sampling(cfg: DictConfig, path: str, run_cfg: DictConfig) -> None:
    """The settings a checkpoint will sample with (its own, under the command line's) are valid ones."""
    from illustrious.sample import resolve_settings
    from illustrious.validation import SAMPLING, check_settings

    settings = resolve_settings(cfg, dict(run_cfg.get("sampling") or {}))
    try:
        check_settings(OmegaConf.create({"sampling": settings}), SAMPLING)
    except ConfigError as error:
        raise ConfigError(f"{path}: it would sample with {error}") from None


def metric_settings(cfg: DictConfig):
    from illustrious.eval.metrics.selection import MetricSettings

    return MetricSettings(
        feature_model=cfg.feature_model.name, feature_weights=cfg.feature_model.weights,
        feature_image_size=cfg.feature_model.image_size, reference_images=cfg.reference_images,
        kid_subset_size=cfg.kid_subset_size, kid_subsets=cfg.kid_subsets, clip_model=cfg.clip_model,
        ccip_model=cfg.ccip.model_name, ccip_weights=cfg.ccip.weights, ccip_image_size=cfg.ccip.image_size,
        ccip_references=cfg.ccip.references, batch_size=cfg.batch_size)


def check_evaluate_config(cfg: DictConfig) -> dict:
    """Every setting of conf/evaluate.yaml checked before any checkpoint loads; returns what the run needs."""
    from illustrious.eval.metrics.selection import METRICS
    from illustrious.sample import read_prompt_file
    from illustrious.validation import EVALUATE, check_settings

    check_settings(cfg, EVALUATE)
    checkpoints = listed(cfg, "checkpoints", "[runs/a/last.safetensors,runs/b/last.safetensors]")
    for path in checkpoints:
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"checkpoints: {path!r} does not exist: give training checkpoints, e.g. "
                              "checkpoints=[outputs/<date>/<time>/checkpoints/last.safetensors]")
    if cfg.allow_pickle is False and any(Path(p).suffix != ".safetensors" for p in checkpoints):
        bad = next(p for p in checkpoints if Path(p).suffix != ".safetensors")
        raise ConfigError(f"checkpoints: {bad!r} is not a .safetensors checkpoint; pickled checkpoints are read only "
                          "with allow_pickle=true (and then with weights_only=True).")
    labels = listed(cfg, "labels", "[eps,flow]") if cfg.labels is not None else default_labels(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise ConfigError(f"labels={labels}: give {len(checkpoints)} distinct names, one per checkpoint.")
    names = listed(cfg, "metrics", "[luminance,colour]")
    unknown = [n for n in names if n not in METRICS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"metrics={names}: each once, from {', '.join(METRICS)}; e.g. metrics=[shapes,luminance]")
    try:
        prompts = read_prompt_file(cfg.prompts)
    except ConfigError as error:  # the sample command's reader; here the key is `prompts`
        raise ConfigError(str(error).replace("prompt_file=", "prompts=", 1)) from None
    settings = metric_settings(cfg)
    for name in names:
        METRICS[name].check(settings, prompts, len(prompts) * cfg.num_images)
    for path in checkpoints:  # a crafted stored config is refused here, before anything is generated
        check_sampling(cfg, path, stored_run_config(path, cfg.allow_pickle, config_dirs_of(cfg)))
    return {"checkpoints": checkpoints, "labels": labels, "metrics": names, "prompts": prompts, "settings": settings}


def save_png(pixels, path: Path, prompt: str, meta: dict) -> None:
    """One image with its settings (the sample command's text chunks), written atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from illustrious.eval.metrics.images import as_hwc_numpy
    from illustrious.sample import METADATA_KEY, a1111_parameters
    from illustrious.utils.files import atomic_path

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(prompt, meta))
    info.add_text(METADATA_KEY, json.dumps({"prompt": prompt, **meta}))
    with atomic_path(path) as tmp:
        Image.fromarray(as_hwc_numpy(pixels[None])[0]).save(tmp, format="PNG", pnginfo=info)


def tile(image, cell: int):
    """A uint8 (H, W, 3) image no larger than the grid cell (the grid keeps thumbnails, not every full image)."""
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= cell:
        return image
    scale = cell / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.Resampling.LANCZOS))


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str, label: str, folder: Path, jobs: list[str], metrics: dict,
                        feeds: dict) -> tuple[dict, list]:
    """Generate `jobs` from one checkpoint, write its PNGs, score them; returns its table row and grid tiles."""
    import torch

    from illustrious.eval.metrics.images import as_hwc_numpy, as_uint8
    from illustrious.eval.metrics.selection import flatten
    from illustrious.sample import image_size, load_module, resolve_settings
    from illustrious.sampling.generate import generate

    module, run_cfg = load_module(checkpoint, cfg.allow_pickle, cfg.device, config_dirs_of(cfg))
    settings = resolve_settings(cfg, dict(run_cfg.get("sampling") or {}))
    height, width = image_size(cfg, run_cfg, module.backbone.pixel_multiple)
    log.info("%s: %d images at %dx%d, %s, %d steps, CFG %s", label, len(jobs), width, height, settings["sampler"],
             settings["steps"], settings["guidance_scale"])
    pixels = generate(module.backbone, module.objective, jobs, height=height, width=width, seed=cfg.seed,
                      batch_size=cfg.batch_size, **settings)
    device = next(module.parameters()).device
    del module
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    images = as_uint8(pixels)
    common = {**settings, "height": height, "width": width, "checkpoint": str(checkpoint),
              "backbone": run_cfg.backbone.get("_target_"), "objective": run_cfg.objective.get("_target_")}
    for j, (prompt, image) in enumerate(zip(jobs, images, strict=True)):
        save_png(image, folder / f"{j:05d}-{cfg.seed + j}.png", prompt, {**common, "seed": cfg.seed + j})

    row = {"checkpoint": label, "path": str(checkpoint), "sampler": settings["sampler"], "steps": settings["steps"],
           "cfg": settings["guidance_scale"], "size": f"{width}x{height}", "images": len(jobs)}
    for name, metric in metrics.items():
        metric.to(device)
        for start in range(0, len(jobs), cfg.batch_size):
            feeds[name](metric, images[start:start + cfg.batch_size].to(device), jobs[start:start + cfg.batch_size])
        row.update(flatten(name, metric.compute()))
        metric.reset()  # FID / KID keep their reference features
    return row, [tile(image, cfg.grid_cell) for image in as_hwc_numpy(images)]


def evaluate(cfg: DictConfig) -> dict:
    """Run the evaluation `cfg` (conf/evaluate.yaml) asks for; returns {"rows", "paths"}."""
    from illustrious.eval.metrics.selection import METRICS
    from illustrious.eval.metrics.table import write_csv, write_markdown
    from illustrious.sampling.grid import image_grid
    from illustrious.utils.files import atomic_path, atomic_write_json

    plan = check_evaluate_config(cfg)
    jobs = [p for p in plan["prompts"] for _ in range(cfg.num_images)]
    metrics = {name: METRICS[name].build(plan["settings"]) for name in plan["metrics"]}
    feeds = {name: METRICS[name].feed for name in plan["metrics"]}
    out = Path(cfg.out_dir)
    rows, columns = [], []
    for index, (checkpoint, label) in enumerate(zip(plan["checkpoints"], plan["labels"], strict=True)):
        row, tiles = evaluate_checkpoint(cfg, checkpoint, label, out / "images" / folder_name(index, label), jobs,
                                         metrics, feeds)
        rows.append(row)
        columns.append(tiles)
        log.info("%s: %s", label, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))

    paths = {"csv": out / "metrics.csv", "markdown": out / "metrics.md", "grid": out / "grid.png",
             "json": out / "evaluation.json"}
    write_csv(paths["csv"], rows)
    write_markdown(paths["markdown"], rows)
    cells = [(columns[c][j], f"[{label}] {jobs[j]}") for j in range(len(jobs)) for c, label in enumerate(plan["labels"])]
    grid = image_grid([image for image, _ in cells], [caption for _, caption in cells], columns=len(columns),
                      cell=cfg.grid_cell)
    with atomic_path(paths["grid"]) as tmp:
        grid.save(tmp, format="PNG")
    atomic_write_json(paths["json"], {"rows": rows, "prompts": plan["prompts"], "num_images": cfg.num_images,
                                      "seed": cfg.seed, "metrics": plan["metrics"]})
    return {"rows": rows, "paths": paths}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with reported_config_errors():  # one clear message, no stack trace (HYDRA_FULL_ERROR=1 for the trace)
        result = evaluate(cfg)
        for kind, path in result["paths"].items():
            log.info("wrote %s (%s)", path, kind)


def entry() -> None:
    from illustrious.sample import quote_text_overrides

    sys.argv = [sys.argv[0], *quote_text_overrides(sys.argv[1:])]
    main()


if __name__ == "__main__":
    entry()
