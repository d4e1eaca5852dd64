"""`illustrious-sample checkpoint=... prompt="..." [key=value ...]` (or `python -m illustrious.sample`): images
from a training checkpoint. `prompt_file=prompts.txt` reads one prompt per line (blank lines and `#` comments
are skipped), for batch generation.

The model is rebuilt from the run config stored in the checkpoint, so `checkpoint=` alone suffices; every
setting not given falls back to that config's `sampling:` block. Each PNG carries its settings twice in tEXt
chunks: `parameters` (the A1111 / ComfyUI-readable line) and `illustrious` (JSON, exact), and its own seed, so
`prompt=<its prompt> seed=<its seed>` regenerates it alone (to float rounding across batch sizes).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from illustrious.config import CONF_DIR
from illustrious.errors import ConfigError, reported_config_errors, require_checkpoint_file

log = logging.getLogger(__name__)

# sample.yaml key -> generate() argument, for settings that default to the checkpoint's `sampling:` block
FROM_RUN_CONFIG = {"sampler": "sampler", "steps": "steps", "cfg": "guidance_scale", "negative_prompt": "negative_prompt",
                   "shift": "shift", "guidance_rescale": "guidance_rescale", "cfg_trunc_ratio": "cfg_trunc_ratio",
                   "cfg_renorm": "cfg_renorm"}
METADATA_KEY = "illustrious"
TEXT_KEYS = ("prompt", "negative_prompt")


def quote_text_overrides(args: list[str]) -> list[str]:
    """Prompts contain commas, which Hydra's override grammar would read as a list or a sweep: quote a plain
    `prompt=...` / `negative_prompt=...` value so it stays one string (a value already quoted or written as a
    list, `prompt='[a, b]'`, is left alone)."""
    quoted = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in TEXT_KEYS and not value.startswith(("[", "'", '"')):
            # Hydra unescapes backslashes only before a quote or the closing quote: double those, escape quotes
            value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
            arg = f"{key}='{value}'"
        quoted.append(arg)
    return quoted


def resolve_settings(cfg: DictConfig, run_sampling: dict) -> dict:
    """generate() settings: the command line's where given, else the checkpoint's sampling block, else
    generate()'s own defaults (so the PNG records every value actually used)."""
    import inspect

    from illustrious.sampling.generate import generate

    defaults = inspect.signature(generate).parameters
    settings = {arg: run_sampling.get(arg, defaults[arg].default) for arg in FROM_RUN_CONFIG.values()}
    settings.update({arg: cfg[key] for key, arg in FROM_RUN_CONFIG.items() if cfg.get(key) is not None})
    return settings


def image_size(cfg: DictConfig, run_cfg: DictConfig, pixel_multiple: int) -> tuple[int, int]:
    """height, width: the command line's, else the checkpoint's training size; multiples of the backbone's."""
    height = cfg.height or OmegaConf.select(run_cfg, "data.height")
    width = cfg.width or OmegaConf.select(run_cfg, "data.width")
    if not (height and width):
        raise ConfigError("Set height= and width= (e.g. height=1024 width=1024): the checkpoint's run config does "
                          "not say its image size.")
    for key, size in (("height", height), ("width", width)):
        if size % pixel_multiple:
            fit = max(pixel_multiple, round(size / pixel_multiple) * pixel_multiple)
            raise ConfigError(f"{key}={size}: must be a multiple of {pixel_multiple} for this backbone, e.g. {key}={fit}")
    return int(height), int(width)


def read_prompt_file(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with `#` are skipped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"prompt_file={path!r} does not exist: give a text file with one prompt per line.")
    lines = (line.strip() for line in file.read_text(encoding="utf-8").splitlines())
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompt_file={path!r} holds no prompts (blank lines and # comments are skipped).")
    return prompts


def prompts_of(cfg: DictConfig) -> list[str]:
    """`prompt` (one string or a list) followed by the lines of `prompt_file`."""
    given = [] if cfg.prompt is None else [cfg.prompt] if isinstance(cfg.prompt, str) else list(cfg.prompt)
    if not all(isinstance(p, str) for p in given):
        raise ConfigError(f"prompt={given!r}: give text, e.g. prompt=\"a red circle\" or prompt='[first, second]'.")
    prompts = given + (read_prompt_file(cfg.prompt_file) if cfg.prompt_file else [])
    if not prompts:
        raise ConfigError('Nothing to sample: set prompt="..." or prompt_file=prompts.txt (one prompt per line).')
    return prompts


def check_sample_config(cfg: DictConfig) -> list[str]:
    """Every setting of conf/sample.yaml checked before the model loads; returns the prompts."""
    from illustrious.validation import SAMPLE, check_settings

    check_settings(cfg, SAMPLE)
    require_checkpoint_file(cfg.checkpoint)
    if cfg.init_image and not Path(cfg.init_image).expanduser().is_file():
        raise ConfigError(f"init_image={cfg.init_image!r} does not exist.")
    return prompts_of(cfg)


def load_init_images(path: str, n: int, height: int, width: int):
    """An image file -> (n, 3, height, width) in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    file = Path(path).expanduser()
    image = Image.open(file).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    return pixels.unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def a1111_parameters(prompt: str, meta: dict) -> str:
    """The `parameters` text chunk as A1111 writes it (readable by most image viewers and UIs)."""
    fields = {"Steps": meta["steps"], "Sampler": meta["sampler"], "CFG scale": meta["guidance_scale"],
              "Seed": meta["seed"], "Size": f"{meta['width']}x{meta['height']}", "Model": Path(meta["checkpoint"]).stem}
    extra = {"Shift": meta.get("shift"), "CFG rescale": meta.get("guidance_rescale") or None,
             "CFG truncation": meta.get("cfg_trunc_ratio") if meta.get("cfg_trunc_ratio", 1.0) < 1.0 else None,
             "CFG renorm": meta.get("cfg_renorm") or None, "Denoising strength": meta.get("strength")}
    fields.update({k: v for k, v in extra.items() if v is not None})
    line = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return f"{prompt}\nNegative prompt: {meta.get('negative_prompt', '')}\n{line}"


def save_png(pixels, path: Path, prompt: str, meta: dict) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from illustrious.eval.composition import to_uint8

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(prompt, meta))
    info.add_text(METADATA_KEY, json.dumps({"prompt": prompt, **meta}))
    Image.fromarray(to_uint8(pixels[None])[0]).save(path, pnginfo=info)


def read_settings(path: str | Path) -> dict:
    """The exact settings a PNG written here was sampled with."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


def next_index(out: Path) -> int:
    """Images are numbered on from what the folder already holds, so earlier samples are never overwritten."""
    taken = [int(p.name.split("-")[0]) for p in out.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")]
    return max(taken, default=-1) + 1


def load_module(checkpoint: str, allow_pickle: bool = False, device: str = "auto", config_dirs=None):
    """The trained DiffusionModule and its run config, from a checkpoint alone (and the user's config folders
    when the run used options of its own: `--config-dir DIR` or `config_dir=DIR`)."""
    import torch

    from illustrious.weights.rebuild import module_from_checkpoint

    module, run_cfg, _ = module_from_checkpoint(checkpoint, allow_pickle, config_dirs)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return module.to(device).eval(), run_cfg


def sample(cfg: DictConfig) -> list[Path]:
    """Write the images `cfg` (conf/sample.yaml) asks for; returns their paths."""
    from illustrious.eval.trajectory import TrajectoryRecorder, plot_trajectory, trajectory_metrics
    from illustrious.sampling.generate import generate

    prompts = check_sample_config(cfg)
    from illustrious.weights.rebuild import config_dirs_of

    module, run_cfg = load_module(cfg.checkpoint, cfg.allow_pickle, cfg.device, config_dirs_of(cfg))
    settings = resolve_settings(cfg, dict(run_cfg.get("sampling") or {}))
    height, width = image_size(cfg, run_cfg, module.backbone.pixel_multiple)
    jobs = [p for p in prompts for _ in range(cfg.num_images)]
    init = load_init_images(cfg.init_image, len(jobs), height, width) if cfg.init_image else None
    recorder = TrajectoryRecorder(module.backbone.decode) if cfg.diagnostics else None
    pixels = generate(module.backbone, module.objective, jobs, height=height, width=width, seed=cfg.seed,
                      batch_size=cfg.batch_size, init_images=init, strength=cfg.strength, callback=recorder,
                      **settings)

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = next_index(out)
    common = {**settings, "height": height, "width": width, "checkpoint": str(cfg.checkpoint),
              "backbone": run_cfg.backbone.get("_target_"), "objective": run_cfg.objective.get("_target_")}
    if init is not None:
        common.update(init_image=str(cfg.init_image), strength=cfg.strength)
    metrics = trajectory_metrics(recorder) if recorder is not None else None
    paths = []
    for j, (prompt, image) in enumerate(zip(jobs, pixels, strict=True)):
        meta = {**common, "seed": cfg.seed + j}
        path = out / f"{first + j:05d}-{meta['seed']}.png"
        save_png(image, path, prompt, meta)
        paths.append(path)
        if recorder is not None:
            plot_trajectory(recorder, j, path.with_name(path.stem + "_trajectory.png"), title=prompt)
            per_image = {k: ([step[j] for step in v] if isinstance(v, list) and k != "t" else v)
                         for k, v in metrics.items()}
            path.with_name(path.stem + "_trajectory.json").write_text(json.dumps(per_image, indent=1))
    return paths


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    with reported_config_errors():  # one clear message, no stack trace (HYDRA_FULL_ERROR=1 for the trace)
        for path in sample(cfg):
            log.info("wrote %s", path)


def entry() -> None:
    sys.argv = [sys.argv[0], *quote_text_overrides(sys.argv[1:])]
    main()


if __name__ == "__main__":
    entry()
