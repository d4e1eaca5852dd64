"""Config checks that run before anything heavy is imported or built, and clearer composition errors."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from illustrious.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"  # shipped inside the package (and the wheel)


def _register_resolvers() -> None:
    from illustrious.cluster import register_resolvers

    register_resolvers()


_register_resolvers()  # the configs' own resolvers exist before anything composes them


def instantiate(node, **kwargs):
    """Hydra's instantiate, but our own configuration errors surface as themselves, not wrapped in
    Hydra's InstantiationException (whose message buries the one that says what to do)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ConfigError, FileNotFoundError)):
            raise cause from None
        raise


def validate(cfg: DictConfig) -> None:
    """Reject settings that cannot work, naming the field, its type and an example: every typed key of the
    run config (illustrious/validation.py), then the rules that relate several keys."""
    from illustrious.validation import RUN, check_settings

    check_settings(cfg, RUN)
    steps, epochs = cfg.trainer.get("max_steps", -1), cfg.trainer.get("max_epochs")
    if steps == -1 and epochs in (None, -1):
        raise ConfigError(f"trainer.max_steps={steps}: set a positive number of steps, e.g. trainer.max_steps=600 "
                          "(or trainer.max_epochs).")
    lr, te_lr = cfg.optim.get("lr"), cfg.optim.get("text_encoder_lr")
    if not lr and not te_lr:
        raise ConfigError("optim.lr and optim.text_encoder_lr are both 0: nothing would train. "
                          "Set optim.lr=1e-4 (the denoiser) or optim.text_encoder_lr=1e-5.")
    timesteps = cfg.objective.get("timesteps") or {}
    if timesteps.get("t_min", 0.0) >= timesteps.get("t_max", 1.0):
        raise ConfigError(f"objective.timesteps.t_min={timesteps.t_min} must be below objective.timesteps.t_max="
                          f"{timesteps.t_max}.")


def explain_composition_error(overrides: list[str]) -> str | None:
    """After Hydra rejects an override of a key that does not exist, name the keys that do.

    Hydra's own message says the key is missing but not which keys exist; composing again with only
    the group choices lets us list them, closest match first. Returns None when that is not the problem.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None
    group_names = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    groups, keys = [], []
    for o in parsed:
        name = o.key_or_group
        if name == "hydra.searchpath":  # the user's own config folders: their groups compose too
            groups.append(o.input_line)
            continue
        if o.is_hydra_override() or o.is_delete():
            continue
        if name.split("/")[0] in group_names and "." not in name:
            value = next(iter(o.sweep_string_iterator())) if o.is_sweep_override() else o.value()
            groups.append(f"{'+' if o.is_add() else ''}{name}={value}")
        elif not o.is_add() and not o.is_force_add():
            keys.append(name)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=groups)
    except Exception:
        return None  # a bad group choice: Hydra's message already lists the options
    finally:
        GlobalHydra.instance().clear()
    for key in keys:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
        if isinstance(parent, DictConfig) and leaf not in parent:
            valid = sorted(str(k) for k in parent.keys())
            close = difflib.get_close_matches(leaf, valid, n=1)
            where = f"'{parent_key}'" if parent_key else "the top level"
            hint = f" Did you mean {parent_key + '.' if parent_key else ''}{close[0]}?" if close else ""
            return (f"'{key}' is not a setting.{hint}\nValid keys under {where}: {', '.join(valid)}\n"
                    f"(To add a new key on purpose, write +{key}=...)")
    return None
