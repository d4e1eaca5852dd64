"""The run config a checkpoint carries: data that selects among our own config groups, never code.

A checkpoint is shared like any file, so nothing read from it may choose a class or function to run. What
is stored is (1) the group choices (`backbone: sdxl_tiny`, `objective/timesteps: logit_normal`, ...) and
(2) the resolved values with every Hydra special key (`_target_`, `_partial_`, `_args_`, ...) removed.
Rebuilding composes *our* config from those choices — each must name an option that exists in our config
groups — and then copies the stored plain values onto keys that already exist there. The classes that run
are therefore always the ones our own YAML files name for the chosen options.

Checkpoints written before this format stored the whole resolved config, targets included. Their targets
are read only as strings and matched against what each of our options composes to; a target that matches
none (a crafted `pathlib.Path.write_text`, say) is refused with a message, never imported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from illustrious.config import CONF_DIR
from illustrious.errors import ConfigError

log = logging.getLogger(__name__)

STORED_KEY = "illustrious_run"  # {"format": 1, "choices": {...}, "values": {...}}
LEGACY_KEY = "illustrious_config"  # the whole resolved config, targets included (read by matching only)
FORMAT = 1
OPTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NOT_CHOSEN_FROM_CHECKPOINTS = {"experiment"}  # a recipe is re-applied only by name, below
# Chosen by the run config itself from other choices (`recipe: ${data}_${backbone}_${objective}`): never stored,
# re-derived when the config is composed again.
DERIVED_GROUPS = {"recipe"}
# Targets our own options named in earlier releases -> today's, so older checkpoints still match by name.
RENAMED_TARGETS = {
    "illustrious.data.shapes_datamodule.ShapesDataModule": "illustrious.data.sources.shapes_datamodule.ShapesDataModule",
    "illustrious.data.folder_datamodule.FolderDataModule":
        "illustrious.data.sources.folder_datamodule.FolderDataModule.from_config",
    "illustrious.data.webdataset_datamodule.WebDataModule":
        "illustrious.data.sources.webdataset_datamodule.WebDataModule.from_config",
}


def is_special(key: Any) -> bool:
    """Hydra's instantiate keys (`_target_`, `_partial_`, `_convert_`, `_recursive_`, `_args_`, ...)."""
    return isinstance(key, str) and key.startswith("_")


def user_config_dirs(dirs: Any) -> tuple[str, ...]:
    """The user's own config folders (given on the command line, never by a checkpoint) as absolute paths."""
    if dirs is None:
        return ()
    found = []
    for d in [dirs] if isinstance(dirs, (str, Path)) else list(dirs):
        path = Path(str(d).removeprefix("file://")).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"config folder {d!r} does not exist: give the folder of your own config groups "
                              "(laid out like illustrious/conf) that the run was trained with.")
        found.append(str(path))
    return tuple(dict.fromkeys(found))


@cache
def group_options(config_dirs: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every config group in the package (nested ones as `objective/timesteps`) -> its option names, with the
    options the user's own config folders add to those groups."""
    groups: dict[str, tuple[str, ...]] = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF_DIR).as_posix()
        if group.startswith("hydra"):
            continue
        options = {p.stem for root in (CONF_DIR, *map(Path, config_dirs)) for p in (root / group).glob("*.yaml")}
        if options:
            groups[group] = tuple(sorted(options))
    return groups


def compose_run_config(overrides: list[str], config_dirs: tuple[str, ...] = ()) -> DictConfig:
    """Compose the package's `config` with these overrides (outside any running Hydra app), the user's config
    folders on the search path after the package's own (as `--config-dir` puts them when training)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if config_dirs:
        overrides = [*overrides, "hydra.searchpath=[" + ",".join(f"file://{d}" for d in config_dirs) + "]"]
    outer = GlobalHydra.instance().is_initialized()
    if outer:  # inside a Hydra app (the sample command): compose with its own loader
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


# -- writing -----------------------------------------------------------------------------------------------
def plain_values(node: Any) -> Any:
    """The resolved config with every special key removed: numbers, strings, lists and dicts only."""
    if isinstance(node, Mapping):
        return {str(k): plain_values(v) for k, v in node.items() if not is_special(k)}
    if isinstance(node, (list, tuple)):
        return [plain_values(v) for v in node]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    return str(node)


def current_choices(cfg: DictConfig | Mapping) -> dict[str, str]:
    """The group choices behind `cfg`: Hydra's record when a Hydra app composed it, else matched from the
    config's own targets (a notebook's `compose()` keeps no record)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        recorded = OmegaConf.to_container(HydraConfig.get().runtime.choices)
        known = group_options()
        return {g: str(o) for g, o in recorded.items()
                if o is not None and (g in known or g in NOT_CHOSEN_FROM_CHECKPOINTS) and not g.startswith("hydra")
                and g not in DERIVED_GROUPS}
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return infer_choices(resolved, strict=False)


def stored_run_config(cfg: DictConfig) -> dict:
    """What a checkpoint stores about the run that wrote it."""
    values = plain_values(OmegaConf.to_container(cfg, resolve=True))
    values.pop("hydra", None)
    return {"format": FORMAT, "choices": current_choices(cfg), "values": values}


# -- reading -----------------------------------------------------------------------------------------------
def _targets(node: Any, prefix: str = "", skip: frozenset = frozenset()) -> tuple[tuple[str, str], ...]:
    """(path, target string) for every `_target_` below `node`, leaving out the subtrees in `skip`."""
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_":
                found.append((prefix, RENAMED_TARGETS.get(str(value), str(value))))
            elif path not in skip:
                found.extend(_targets(value, path, skip))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_targets(value, f"{prefix}[{i}]", skip))
    return tuple(sorted(found))


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@cache
def _option_signatures(group: str, config_dirs: tuple[str, ...] = ()) -> dict[str, tuple]:
    """For each option of `group`: the targets its node composes to (nested groups left out)."""
    path = group.replace("/", ".")
    nested = frozenset(g.replace("/", ".") for g in group_options() if g.startswith(group + "/"))
    signatures = {}
    for option in group_options(config_dirs)[group]:
        try:
            cfg = compose_run_config([f"{group}={option}"], config_dirs)
        except Exception:  # an option that only composes together with others
            continue
        node = OmegaConf.to_container(OmegaConf.select(cfg, path), resolve=False) if OmegaConf.select(cfg, path) is not None else None
        signatures[option] = _targets(node, path, nested)
    return signatures


def infer_choices(resolved: Mapping, *, strict: bool = True, source: str = "the stored config",
                  config_dirs: tuple[str, ...] = ()) -> dict[str, str]:
    """Match each group's node in a resolved config against our options, by the targets it names.

    Targets are compared as strings; nothing is imported. With `strict`, a node that names targets no
    option of ours composes to is refused.
    """
    choices = {}
    for group in group_options():
        if group in NOT_CHOSEN_FROM_CHECKPOINTS:
            continue
        path = group.replace("/", ".")
        node = _select(resolved, path)
        if node is None:
            continue
        nested = frozenset(g.replace("/", ".") for g in group_options() if g.startswith(group + "/"))
        wanted = _targets(node, path, nested)
        if not wanted:
            continue
        matches = [o for o, sig in _option_signatures(group, config_dirs).items() if sig == wanted]
        if len(matches) > 1:  # same classes, different settings: the option whose values agree most
            matches.sort(key=lambda o: -_agreement(resolved, group, o, config_dirs))
        if matches:
            choices[group] = matches[0]
        elif strict:
            names = ", ".join(sorted({t for _, t in wanted}))
            raise ConfigError(
                f"{source}: its '{path}' names {names}, which none of our '{group}' options "
                f"({', '.join(group_options(config_dirs)[group])}) uses. A checkpoint's config may only select our "
                "own config groups; it will not be built. If you wrote this model yourself, rebuild it in Python.")
    return choices


def _agreement(resolved: Mapping, group: str, option: str, config_dirs: tuple[str, ...] = ()) -> int:
    path = group.replace("/", ".")
    composed = OmegaConf.to_container(OmegaConf.select(compose_run_config([f"{group}={option}"], config_dirs), path),
                                      resolve=False)
    stored = _select(resolved, path)

    def count(a, b):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return sum(count(a[k], b[k]) for k in a if k in b)
        return int(a == b)
    return count(composed, stored)


def _check_plain(node: Any, where: str, source: str) -> None:
    """Stored values are plain data; an interpolation (`${...}`) would be evaluated, so it is refused."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ConfigError(f"{source}: stored key {key!r} under '{where}' is not a string.")
            _check_plain(value, f"{where}.{key}" if where else key, source)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_plain(value, f"{where}[{i}]", source)
    elif isinstance(node, str):
        if "${" in node:
            raise ConfigError(f"{source}: stored value '{where}' contains an interpolation ({node!r}); "
                              "stored configs hold plain values only.")
    elif not (node is None or isinstance(node, (bool, int, float))):
        raise ConfigError(f"{source}: stored value '{where}' is a {type(node).__name__}, not plain data.")


def _copy_values(target: DictConfig, values: Mapping, where: str, skipped: list[str]) -> None:
    """Copy stored values onto keys our composed config already has; specials never cross."""
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if is_special(key):
            continue
        if key not in target.keys():  # (`in` alone says False for an unresolvable interpolation)
            skipped.append(path)
            continue
        current = target._get_node(key)  # without resolving what it holds now
        if isinstance(current, DictConfig) and isinstance(value, Mapping):
            _copy_values(current, value, path, skipped)
        elif isinstance(current, DictConfig) or isinstance(value, Mapping):
            skipped.append(path)  # a node where we have a value, or the reverse: keep ours
        else:
            target[key] = value


USER_FOLDER_HINT = ("If the run was trained with your own config folder (--config-dir DIR or hydra.searchpath), "
                    "give the same folder here: --config-dir DIR or config_dir=DIR.")


def validate_choices(choices: Mapping, source: str, config_dirs: tuple[str, ...] = ()) -> dict[str, str]:
    """Each stored choice must be a plain option name found in our groups (or the user's folders given on the
    command line); a checkpoint never names a folder, a path or a target."""
    known = group_options(config_dirs)
    valid = {}
    for group, option in choices.items():
        option = str(option)
        if group in DERIVED_GROUPS:
            continue
        if group in NOT_CHOSEN_FROM_CHECKPOINTS:
            if OPTION_NAME.match(option) and option in known.get(group, ()):
                valid[group] = option
            continue
        if group not in known:
            raise ConfigError(f"{source}: stored choice for '{group}', which is not one of our config groups "
                              f"({', '.join(known)}).")
        if not OPTION_NAME.match(option) or option not in known[group]:
            folders = f" in {', '.join(config_dirs)}" if config_dirs else ""
            hint = USER_FOLDER_HINT if OPTION_NAME.match(option) else ""
            raise ConfigError(f"{source}: stored choice {group}={option!r} is not one of our options for '{group}' "
                              f"({', '.join(known[group])}, in the package{folders}). {hint}".rstrip())
        valid[group] = option
    return valid


def rebuild_run_config(checkpoint: Mapping, source: str, extra_overrides: list[str] | None = None,
                       config_dirs: Any = None) -> DictConfig:
    """The run config for a checkpoint, composed from our own config groups (see the module docstring).

    `config_dirs`: the user's own config folders, given by whoever runs the command (never read from the
    checkpoint), whose options the stored choices may then select, as `--config-dir` allowed when training.
    """
    config_dirs = user_config_dirs(config_dirs)
    if STORED_KEY in checkpoint:
        stored = checkpoint[STORED_KEY]
        if not isinstance(stored, Mapping) or not isinstance(stored.get("values"), Mapping):
            raise ConfigError(f"{source}: its stored run config ({STORED_KEY}) is malformed.")
        values = stored["values"]
        _check_plain(values, "", source)
        _check_plain(stored.get("choices") or {}, "choices", source)
        choices = validate_choices(stored.get("choices") or {}, source, config_dirs)
    elif LEGACY_KEY in checkpoint:
        values = checkpoint[LEGACY_KEY]
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: its stored run config ({LEGACY_KEY}) is malformed.")
        choices = infer_choices(values, strict=True, source=source, config_dirs=config_dirs)
        values = plain_values(values)
        _check_plain(values, "", source)
    else:
        raise ConfigError(f"{source} has no stored run config; it was not written by illustrious.train, so "
                          "the model cannot be rebuilt from it.")
    overrides = [f"+{g}={o}" if g in NOT_CHOSEN_FROM_CHECKPOINTS else f"{g}={o}" for g, o in choices.items()]
    cfg = compose_run_config(overrides + list(extra_overrides or []), config_dirs)
    skipped: list[str] = []
    OmegaConf.set_struct(cfg, False)
    _copy_values(cfg, {k: v for k, v in values.items() if k != "hydra"}, "", skipped)
    OmegaConf.set_struct(cfg, True)
    if skipped:
        log.warning("%s: stored settings with no place in today's config were ignored: %s", source,
                    ", ".join(skipped))
    return cfg
