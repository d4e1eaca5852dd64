"""SLURM settings derived from the trainer config (Hydra resolvers used by `hydra/launcher=slurm`)."""

from __future__ import annotations

from omegaconf import OmegaConf

from illustrious.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")


def tasks_per_node(devices) -> int:
    """One SLURM task per device; `auto` means one (set trainer.devices to use more)."""
    if devices in (None, "auto"):
        return 1
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ConfigError(f"trainer.devices={devices!r}: under hydra/launcher=slurm give a number of devices per node "
                      "(SLURM starts one task per device).")


def gpus_per_node(accelerator, devices) -> int | None:
    """GPUs requested per node: the devices when training on GPUs, none otherwise."""
    return tasks_per_node(devices) if str(accelerator) in GPU_ACCELERATORS else None


def register_resolvers() -> None:
    for name, fn in (("slurm_tasks_per_node", tasks_per_node), ("slurm_gpus_per_node", gpus_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
