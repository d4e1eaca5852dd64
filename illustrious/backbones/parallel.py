"""What a backbone declares about sharding and activation checkpointing, and the two ways it is applied.

Each backbone's `parallelize.py` (beside its model code) names its units: the blocks that become FSDP units
(all-gathered one at a time) and the blocks whose activations are recomputed in the backward pass. The same
declaration drives FSDP1 (Lightning's FSDPStrategy, through `BackboneUnits`) and FSDP2 (`fully_shard` per
unit from `DiffusionModule.configure_model`, through `apply_fsdp2`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.distributed.fsdp.wrap import _Policy


@dataclass(frozen=True)
class ParallelPolicy:
    """Module classes by role; the callables import them lazily (diffusers/transformers are heavy)."""

    wrap_units: Callable[[], tuple[type[nn.Module], ...]]
    checkpoint_units: Callable[[], tuple[type[nn.Module], ...]]
    # modules sharded as a whole after their units, each called through its own forward (FSDP2 gathers
    # parameters in a forward hook): the denoiser
    shard_roots: Callable[[nn.Module], list[nn.Module]]
    # modules sharded part by part (every child holding parameters outside the units): the text-encoder
    # models, whose class must not change (transformers finds a model's hidden-state hooks by its class)
    shard_by_parts: Callable[[nn.Module], list[nn.Module]]

    def units(self, kind: str) -> tuple[type[nn.Module], ...]:
        if kind not in ("wrap", "checkpoint"):
            raise ValueError(f"Unknown unit kind {kind!r}: 'wrap' or 'checkpoint'.")
        return self.wrap_units() if kind == "wrap" else self.checkpoint_units()


def find_backbone(root: nn.Module) -> nn.Module:
    """The first submodule (or root) that declares a parallel policy."""
    for module in root.modules():
        if callable(getattr(module, "parallel_policy", None)):
            return module
    raise ValueError(f"{type(root).__name__} contains no backbone that declares a parallel policy.")


def unit_modules(root: nn.Module, kind: str) -> list[nn.Module]:
    """The modules under `root` its backbone names as `kind` units ('wrap' or 'checkpoint'), in order."""
    classes = find_backbone(root).parallel_policy().units(kind)
    return [m for m in root.modules() if isinstance(m, classes)]


class BackboneUnits(_Policy):
    """An FSDP1 wrap / activation-checkpointing policy that asks the backbone inside the wrapped module.

    Built from the config before any model exists (`trainer=fsdp`); resolved when FSDP runs the policy.
    """

    def __init__(self, kind: str = "wrap"):
        super().__init__()
        self.kind = kind

    def _run_policy(self, root_module: nn.Module, ignored_modules: set[nn.Module],
                    root_kwargs: dict[str, Any]) -> dict[nn.Module, dict[str, Any]]:
        return {m: copy.copy(root_kwargs) for m in unit_modules(root_module, self.kind) if m not in ignored_modules}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r})"


def parts_outside_units(module: nn.Module, units: set[nn.Module]) -> list[nn.Module]:
    """The largest submodules of `module` that hold parameters but contain no unit (units are sharded already)."""

    def has_own_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters(recurse=False))

    if has_own_params(module):
        raise ValueError(f"{type(module).__name__} holds parameters itself; shard it as a root instead.")
    parts = []
    for child in module.children():
        if child in units or not any(True for _ in child.parameters()):
            continue
        inner_units = any(m in units for m in child.modules())
        parts.extend(parts_outside_units(child, units) if inner_units else [child])
    return parts


def apply_activation_checkpointing(modules: Iterable[nn.Module], root: nn.Module, context_fn=None) -> None:
    """Recompute these modules' activations in the backward pass (PyTorch's non-reentrant checkpoint wrapper);
    `context_fn` gives torch.utils.checkpoint the (forward, recomputation) contexts."""
    import functools

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    targets = set(modules)
    wrapper = functools.partial(checkpoint_wrapper, context_fn=context_fn) if context_fn else checkpoint_wrapper
    apply(root, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: m in targets)


def apply_fsdp2(backbone: nn.Module, mesh, *, activation_checkpointing: bool = True,
                reshard_after_forward: bool = True, mp_policy=None) -> list[nn.Module]:
    """`fully_shard` every wrap unit, then the text encoders' remaining parts, then each shard root (the
    denoiser); returns the sharded modules in the order they were sharded.

    The autoencoder is frozen and called outside any forward (`encode`), so it stays replicated. Parameters of
    a text encoder that no output uses are inside their model's root group and are simply never gathered.
    """
    from torch.distributed.fsdp import fully_shard

    policy = backbone.parallel_policy()
    if activation_checkpointing and not getattr(backbone, "checkpointed_blocks", 0):  # else selective already
        from illustrious.backbones.speed import checkpoint_contexts

        attention = getattr(backbone, "attention", "auto")
        apply_activation_checkpointing(unit_modules(backbone, "checkpoint"), backbone,
                                       context_fn=None if attention == "auto" else checkpoint_contexts(attention))
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    sharded = []
    units = unit_modules(backbone, "wrap")
    for unit in units:
        fully_shard(unit, **kwargs)
        sharded.append(unit)
    for model in policy.shard_by_parts(backbone):
        for part in parts_outside_units(model, set(units)):
            fully_shard(part, **kwargs)
            sharded.append(part)
    for root in policy.shard_roots(backbone):
        # the roots' parameters are needed again right after forward (output layers): keep them gathered
        fully_shard(root, **{**kwargs, "reshard_after_forward": False})
        sharded.append(root)
    return sharded
