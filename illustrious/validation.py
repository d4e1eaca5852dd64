"""Typed settings, checked before any work starts: one table per command of key -> type, range, example.

A value of the wrong type or out of range stops the command with a ConfigError that names the key, the
type it needs and an example, e.g. `optim.lr='abc': needs a number >= 0, e.g. optim.lr=1e-4`; every bad
key is listed at once. Keys a config does not have (another group choice) are skipped, so one table covers
every option of a group. Allowed names come from the registries that use them (samplers, Lightning's
precisions, caption styles), never from a copy here. Checks that relate several keys live in
`illustrious.config.validate`; the components still check their own arguments when built from Python.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from illustrious.errors import ConfigError

ABSENT, MISSING = object(), object()


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Setting:
    """What one key accepts. `kind` is int, number, bool, str, choice or numbers (a list of `length`)."""

    kind: str
    example: str
    min: float | None = None  # inclusive bounds
    max: float | None = None
    above: float | None = None  # exclusive lower bound
    null: bool = False  # null is allowed (it means "default" / "off" wherever the config says so)
    also: tuple = ()  # special values allowed beyond the range (e.g. -1 for "unlimited")
    options: Callable[[], Iterable] | None = None  # for choice: the registry's names
    length: int | None = None  # for numbers

    def describe(self) -> str:
        if self.kind == "choice":
            text = f"one of {', '.join(map(str, self.options()))}"
        else:
            text = {"int": "a whole number (int)", "number": "a number (float)", "bool": "true or false",
                    "str": "a string", "numbers": f"a list of {self.length} numbers"}[self.kind]
            bounds = [f">= {self.min:g}" if self.min is not None else "", f"> {self.above:g}" if self.above is not None else "",
                      f"<= {self.max:g}" if self.max is not None else ""]
            text += " " + " and ".join(b for b in bounds if b) if any(bounds) else ""
        extras = [*map(str, self.also), *(["null"] if self.null else [])]
        return text + (f" (or {' or '.join(extras)})" if extras else "")

    def in_range(self, value) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above))

    def accepts(self, value) -> bool:
        if value is None:
            return self.null
        if value in self.also and type(value) is type(self.also[0]):
            return True
        if self.kind == "int":
            return is_int(value) and self.in_range(value)
        if self.kind == "number":
            return is_number(value) and self.in_range(value)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind == "choice":
            return isinstance(value, str) and value in set(self.options())
        if self.kind == "numbers":
            return (isinstance(value, list | tuple | ListConfig) and len(value) == self.length
                    and all(is_number(v) and self.in_range(v) for v in value))
        raise AssertionError(f"unknown setting kind {self.kind!r}")


def integer(example, **bounds) -> Setting:
    return Setting("int", str(example), **bounds)


def number(example, **bounds) -> Setting:
    return Setting("number", str(example), **bounds)


def boolean(example="true", **kw) -> Setting:
    return Setting("bool", str(example).lower(), **kw)


def text(example, **kw) -> Setting:
    return Setting("str", str(example), **kw)


def choice(options: Callable[[], Iterable], example, **kw) -> Setting:
    return Setting("choice", str(example), options=options, **kw)


def numbers(length: int, example, **bounds) -> Setting:
    return Setting("numbers", str(example), length=length, **bounds)


# Registries, imported only when a check needs them.
def samplers():
    from illustrious.sampling.samplers import SAMPLERS

    return sorted(SAMPLERS)


def precisions():
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return (*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS))


def registry(module: str, name: str) -> Callable[[], tuple]:
    """The names in one of our own registries (`module.name`, a tuple, set or dict), imported when a check runs.
    Both strings are written here, never read from a config."""

    def names() -> tuple:
        return tuple(getattr(importlib.import_module(module), name))

    return names


crop_modes = registry("illustrious.data.images.settings", "CROP_MODES")
txt_styles = registry("illustrious.data.sources.folder_datamodule", "TXT_STYLES")
shard_encodings = registry("illustrious.data.storage.shard_writer", "ENCODINGS")
attention_backends = registry("illustrious.backbones.speed", "ATTENTION_BACKENDS")
compile_modes = registry("illustrious.backbones.speed", "COMPILE_MODES")
latent_dtypes = registry("illustrious.cache_latents", "DTYPES")


# Settings shared by the commands that read a data folder (run, cache_latents, make_shards).
DATA = {
    "seed": integer(0),
    "data.batch_size": integer(8, min=1),
    "data.num_workers": integer(4, min=0),
    "data.seed": integer(0),
    # shapes
    "data.width": integer(32, min=1),
    "data.height": integer(32, min=1),
    "data.length": integer(100000, min=1),
    "data.max_shapes": integer(2, min=1),
    "data.mixed_order": boolean(),
    # folder / webdataset
    "data.root": text("/data/anime", null=True),
    "data.manifest": text("/data/anime/.illustrious/manifest.parquet", null=True),
    "data.rescan": boolean(),
    "data.scan_workers": integer(8, min=1),
    "data.require_caption": boolean(),
    "data.txt_style": choice(txt_styles, "tags"),
    "data.native_resolution": integer(1024, min=8),
    "data.min_side": integer(768, min=1, null=True),
    "data.max_aspect": number(10.0, min=1),
    "data.max_megapixels": number(4.0, above=0),
    "data.bomb_megapixels": number(178.0, above=0),
    "data.crop": choice(crop_modes, "center"),
    "data.bucket_area": numbers(2, "[0.15,2.25]", above=0),
    "data.bucket_megapixels": numbers(2, "[0.15,2.25]", above=0, null=True),
    "data.bucket_step": integer(128, min=1, null=True),
    "data.bucket_multiple": integer(32, min=1, null=True),
    "data.drop_last": boolean(),
    "data.latent_cache": text("/data/latents", null=True),
    "data.text_cache": text("/data/text_cache", null=True),
    "data.text_cache_variants": integer(4, min=1),
    "data.group_by_chunks": boolean(),
    "data.batches_per_epoch": integer(1000, min=1, null=True),
    "data.resampled": boolean(),
    "data.shuffle_buffer": integer(1000, min=0),
    "data.bucket_buffer": integer(512, min=1),
    "data.val_samples": integer(64, min=0),
    "data.val_fraction": number(0.01, min=0, max=0.99),
    "data.val_count": integer(100, min=0),
    "data.val_shards": integer(1, min=0),
}

BACKBONE = {
    "backbone.weights": text("/models/sdxl", null=True),
    "backbone.native_resolution": integer(1024, min=8),
    "backbone.tokenizer_max_length": integer(77, min=1),
    "backbone.max_sequence_length": integer(256, min=1),
    "backbone.system_prompt": text("''"),
    "backbone.attention": choice(attention_backends, "flash"),
    "backbone.channels_last": boolean(),
    "backbone.checkpoint_blocks": number(0.5, min=0, max=1),
    "backbone.compile": choice(compile_modes, "regional"),
}

SAMPLING = {
    "sampling.sampler": choice(samplers, "euler"),
    "sampling.steps": integer(20, min=1),
    "sampling.guidance_scale": number(4.0, min=0),
    "sampling.negative_prompt": text("'lowres, bad anatomy'"),
    "sampling.shift": number(3.0, above=0, null=True),
    "sampling.guidance_rescale": number(0.7, min=0, max=1),
    "sampling.cfg_trunc_ratio": number(0.25, min=0, max=1),
    "sampling.cfg_renorm": boolean(),
}

RUN = {
    **DATA, **BACKBONE, **SAMPLING,
    "resume": boolean(),
    "ckpt_path": text("outputs/run/checkpoints/last.safetensors", null=True),
    "allow_pickle": boolean("false"),
    "optimized_metric": text("eval/composition_accuracy", null=True),
    "trainer.max_steps": integer(600, min=1, also=(-1,)),
    "trainer.max_epochs": integer(10, min=1, null=True, also=(-1,)),
    "trainer.min_steps": integer(100, min=0, null=True),
    "trainer.min_epochs": integer(1, min=0, null=True),
    "trainer.precision": choice(precisions, "bf16-mixed"),
    "trainer.num_nodes": integer(1, min=1),
    "trainer.accumulate_grad_batches": integer(4, min=1),
    "trainer.gradient_clip_val": number(1.0, min=0, null=True),
    "trainer.log_every_n_steps": integer(10, min=1),
    "trainer.enable_progress_bar": boolean(null=True),
    "trainer.enable_model_summary": boolean(null=True),
    "trainer.enable_checkpointing": boolean(null=True),
    "trainer.num_sanity_val_steps": integer(0, min=-1),
    "optim.lr": number("1e-4", min=0),
    "optim.text_encoder_lr": number("1e-5", min=0, null=True),
    "optim.optimizer.betas": numbers(2, "[0.9,0.999]", min=0, max=1),
    "optim.optimizer.eps": number("1e-8", above=0),
    "optim.optimizer.weight_decay": number(0.01, min=0),
    "optim.optimizer.fused": boolean(null=True),
    "optim.lr_scheduler.num_warmup_steps": integer(50, min=0),
    "optim.lr_scheduler.num_training_steps": integer(600, min=1, also=(-1,)),
    "captions.dropout": number(0.1, min=0, max=1),
    "objective.num_train_timesteps": integer(1000, min=1),
    "objective.beta_start": number(0.00085, above=0),
    "objective.beta_end": number(0.012, above=0),
    "objective.zero_terminal_snr": boolean(),
    "objective.timesteps.shift": number(3.0, above=0, null=True),
    "objective.timesteps.resolution_shift": boolean(),
    "objective.timesteps.t_min": number(0.0, min=0, max=1),
    "objective.timesteps.t_max": number(1.0, min=0, max=1),
    "objective.timesteps.mean": number(0.0),
    "objective.timesteps.std": number(1.0, above=0),
    "objective.timesteps.multiplier": number(2.0, above=0),
    "objective.timesteps.begin": number(0.5, min=0, max=1),
    "objective.timesteps.end": number(1.0, min=0, max=1),
    "objective.timesteps.scale": number(1.29),
    "objective.timesteps.uniform_fraction": number(0.1, min=0, max=1),
    "objective.timesteps.tail_fraction": number(0.3, min=0, max=1),
    "objective.timesteps.tail_min": number(0.85, min=0, max=1),
    "objective.timesteps.tail_after": number(0.5, min=0, max=1),
    "objective.timesteps.tail_until": number(1.0, min=0, max=1),
    "objective.weighting.gamma": number(5.0, above=0),
    "objective.weighting.max_snr": number(1000.0, above=0),
    "objective.weighting.t_floor": number(0.05, above=0, max=1),
    "objective.noise.offset": number(0.05),
    "objective.noise.offset_random_strength": boolean(),
    "objective.noise.pyramid_iterations": integer(6, min=0),
    "objective.noise.pyramid_discount": number(0.3, min=0, max=1),
    "objective.noise.input_perturbation": number(0.1, min=0),
    "objective.noise.input_perturbation_random_strength": boolean(),
    "callbacks.checkpoint.every_n_train_steps": integer(200, min=0),  # 0: only at the final step and on a signal
    "callbacks.samples.every_n_steps": integer(100, min=0),
    "callbacks.samples.num_prompts": integer(16, min=1),
    "callbacks.composition.num_samples": integer(64, min=1),
    "callbacks.memory_check.headroom": number(0.9, above=0, max=1),
    "validation.every_n_steps": integer(200, min=0),
    "validation.batches": integer(4, min=1, null=True),
    "validation.bins": integer(8, min=1),
    "validation.seed": integer(0, min=0),
}

SAMPLE = {
    "checkpoint": text("outputs/run/checkpoints/last.safetensors"),
    "prompt_file": text("prompts.txt", null=True),
    "negative_prompt": text("'lowres, bad anatomy'", null=True),
    "sampler": choice(samplers, "dpmpp_2m", null=True),
    "steps": integer(28, min=1, null=True),
    "cfg": number(5.0, min=0, null=True),
    "seed": integer(0),
    "width": integer(1024, min=1, null=True),
    "height": integer(1024, min=1, null=True),
    "num_images": integer(4, min=1),
    "batch_size": integer(16, min=1),
    "out_dir": text("samples"),
    "shift": number(3.0, above=0, null=True),
    "guidance_rescale": number(0.7, min=0, max=1, null=True),
    "cfg_trunc_ratio": number(0.25, min=0, max=1, null=True),
    "cfg_renorm": boolean(null=True),
    "init_image": text("in.png", null=True),
    "strength": number(0.6, above=0, max=1),
    "diagnostics": boolean(),
    "device": text("cuda"),
    "allow_pickle": boolean("false"),
    "config_dir": text("my_conf", null=True),
}

EVALUATE = {
    **{key: SAMPLE[key] for key in ("negative_prompt", "sampler", "steps", "cfg", "seed", "width", "height",
                                    "num_images", "batch_size", "shift", "guidance_rescale", "cfg_trunc_ratio",
                                    "cfg_renorm", "device", "allow_pickle", "config_dir")},
    "prompts": text("prompts.txt"),
    "out_dir": text("evaluation"),
    "grid_cell": integer(128, min=16),
    "feature_model.name": text("inception_v3", null=True),
    "feature_model.weights": text("/models/inception_v3.safetensors", null=True),
    "feature_model.image_size": integer(299, min=8, null=True),
    "reference_images": text("/data/real_images", null=True),
    "kid_subset_size": integer(50, min=2),
    "kid_subsets": integer(100, min=1),
    "clip_model": text("/models/clip-vit-large-patch14", null=True),
    "ccip.model_name": text("caformer_s36", null=True),
    "ccip.weights": text("/models/ccip.safetensors", null=True),
    "ccip.image_size": integer(384, min=8, null=True),
    "ccip.references": text("/data/characters", null=True),
}

CACHE_LATENTS = {
    **DATA, **BACKBONE,
    "device": text("cuda"),
    "batch_size": integer(16, min=1),
    "num_workers": integer(4, min=0),
    "shard_size": integer(1024, min=1),
    "dtype": choice(latent_dtypes, "float16"),
    "progress": boolean(),
}

MAKE_SHARDS = {
    **DATA,
    "out": text("/data/shards", null=True),
    "shard_size": integer(1000, min=1),
    "encoding": choice(shard_encodings, "webp"),
    "quality": integer(95, min=1, max=100),
    "progress": boolean(),
}


def show(value) -> str:
    if isinstance(value, DictConfig | ListConfig):
        return str(OmegaConf.to_container(value, resolve=False))
    return repr(value) if isinstance(value, str) else str(value).replace("None", "null")


def lookup(cfg: DictConfig, key: str):
    """The value at a dotted key; ABSENT when the config has no such key, MISSING when it is `???`."""
    parent_key, _, leaf = key.rpartition(".")
    parent = (OmegaConf.select(cfg, parent_key, throw_on_missing=False, throw_on_resolution_failure=False)
              if parent_key else cfg)
    if not isinstance(parent, DictConfig) or leaf not in parent.keys() or OmegaConf.is_interpolation(parent, leaf):
        return ABSENT  # not in this config, or a copy of another key (checked there)
    return MISSING if OmegaConf.is_missing(parent, leaf) else parent[leaf]


def check_settings(cfg: DictConfig, table: dict[str, Setting]) -> None:
    """Raise one ConfigError listing every key of `table` whose value `cfg` sets wrongly (or leaves required)."""
    problems = []
    for key, setting in table.items():
        try:
            value = lookup(cfg, key)
        except OmegaConfBaseException as e:  # an interpolation that does not resolve
            problems.append(f"{key}: {str(e).splitlines()[0]}")
            continue
        if value is MISSING:
            problems.append(f"{key} is required: {setting.describe()}, e.g. {key}={setting.example}")
        elif value is not ABSENT and not setting.accepts(value):
            problems.append(f"{key}={show(value)}: needs {setting.describe()}, e.g. {key}={setting.example}")
    if problems:
        raise ConfigError("\n".join(problems) if len(problems) == 1 else
                          "These settings are not valid:\n  " + "\n  ".join(problems))
