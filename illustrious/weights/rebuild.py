"""The trained model a training checkpoint holds, rebuilt for the commands that use one (sample, export).

The run config comes from the checkpoint only through `run_config.rebuild_run_config` (our own config groups,
plus the user's config folders named on the command line). The checkpoint's `state_dict` holds every weight,
LoRA adapters included, so files the run started from are not read again: a moved `lora.weights` file is not
needed to sample or export, nor is an SDXL single file given as `backbone.weights` (its architecture is built
on the meta device and the checkpoint's tensors are assigned).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict


def config_dirs_of(cfg: DictConfig) -> list[str]:
    """The user's config folders for a command: its `config_dir` key (a folder or a list) and the folders given
    to the running Hydra app with `--config-dir` (Hydra records them as command-line config sources)."""
    from hydra.core.hydra_config import HydraConfig

    given = cfg.get("config_dir")
    dirs = [] if given is None else [given] if isinstance(given, str) else [str(d) for d in given]
    if HydraConfig.initialized():
        dirs += [s.path for s in HydraConfig.get().runtime.config_sources
                 if s.provider == "command-line" and s.schema == "file"]
    return dirs


def without_start_files(run_cfg: DictConfig) -> DictConfig:
    """The run config with the files the checkpoint's weights replace anyway left out: `lora.weights` (the
    adapters a run continued from are in the state dict)."""
    run_cfg = run_cfg.copy()
    if OmegaConf.select(run_cfg, "lora.weights") is not None:
        with open_dict(run_cfg):
            run_cfg.lora.weights = None
    return run_cfg


def backbone_without_weights(run_cfg: DictConfig):
    """The backbone built without reading `backbone.weights`, where its loader can (it takes
    `weights_in_checkpoint`); else None and the backbone is built as usual. The target is our own config's."""
    from hydra.utils import get_method

    from illustrious.config import instantiate

    node = run_cfg.backbone
    if node.get("weights") is None:
        return None
    if "weights_in_checkpoint" not in inspect.signature(get_method(node._target_)).parameters:
        return None
    return instantiate(node, weights_in_checkpoint=True)


def module_from_checkpoint(checkpoint: str | Path, allow_pickle: bool = False, config_dirs: Any = None
                           ) -> tuple[Any, DictConfig, dict]:
    """(DiffusionModule with the checkpoint's weights, its rebuilt run config, the checkpoint itself)."""
    from illustrious.checkpoint_io import load_checkpoint_file, refused_as_config_error
    from illustrious.train import build_module
    from illustrious.weights.run_config import rebuild_run_config

    with refused_as_config_error():
        ckpt = load_checkpoint_file(checkpoint, allow_pickle=allow_pickle)
    # the stored config only selects our own config groups (and the user's, given here); it never names code
    run_cfg = rebuild_run_config(ckpt, source=str(checkpoint), config_dirs=config_dirs)
    run_cfg_to_build = without_start_files(run_cfg)
    module = build_module(run_cfg_to_build, backbone=backbone_without_weights(run_cfg_to_build))
    state = ckpt["state_dict"]
    meta = any(p.is_meta for p in module.parameters())
    if meta:  # parameters made on the meta device take the checkpoint's tensors, in the dtypes the model has
        own = module.state_dict()
        state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, assign=meta)
    return module, run_cfg, ckpt
