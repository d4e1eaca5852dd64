"""Lightning strategies the `trainer=` presets build: FSDP, FSDP2 and DeepSpeed with the backbone's own policy.

Which blocks are sharded units and which are activation-checkpointed is the backbone's business
(`Backbone.parallel_policy()`, declared in `illustrious/backbones/<name>/parallelize.py`); these factories only
hand Lightning a policy that asks the backbone once the model exists.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from illustrious import sharded_checkpoint
from illustrious.backbones.parallel import BackboneUnits
from illustrious.errors import ConfigError

HYBRID = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")


class FSDP2Strategy(ModelParallelStrategy):
    """All processes in the data-parallel (sharding) dimension: FSDP2 without tensor parallelism. (Callbacks that
    must skip sharded strategies look for "FSDP" in the class name: callbacks/memory_check.py.)"""

    fsdp2_options: dict = {}  # read by DiffusionModule.configure_model

    def setup_environment(self) -> None:
        # the world size is known only now; ModelParallelStrategy's "auto" would make the node's devices a
        # tensor-parallel group
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any = None) -> None:
        """Lightning's save (a DCP folder written by every rank, or one gathered file through our
        CheckpointIO), then a sharded folder is sealed with its manifest once every rank has written."""
        step, epoch = checkpoint.get("global_step"), checkpoint.get("epoch")
        super().save_checkpoint(checkpoint, filepath, storage_options)
        if self._save_distributed_checkpoint:
            self.barrier("FSDP2Strategy.save_checkpoint")
            if self.global_rank == 0:
                sharded_checkpoint.seal(Path(filepath), int(step or 0), int(epoch or 0), self.world_size)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """A sealed sharded folder read without unpickling code (illustrious.sharded_checkpoint), or a
        single-file checkpoint through our verified CheckpointIO; either into the sharded module, at any
        world size."""
        path = Path(self.broadcast(checkpoint_path))
        module = self.model
        if path.is_dir():
            sharded_checkpoint.verify(path, checksums=False)  # sizes only: train() verified the checksums
            return sharded_checkpoint.load_into(path, module, self.optimizers, self.lightning_module.strict_loading)
        from lightning.fabric.strategies.model_parallel import (
            _load_raw_module_state,
            _rekey_optimizer_state_if_needed,
        )
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # Lightning's own steps for a full checkpoint, reading it through our verified CheckpointIO (not torch.load)
        checkpoint = self.checkpoint_io.load_checkpoint(path)
        strict = self.lightning_module.strict_loading
        _load_raw_module_state(checkpoint["state_dict"], module, strict=strict)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", []), strict=False):
            set_optimizer_state_dict(module, optimizer, options=options,
                                     optim_state_dict=_rekey_optimizer_state_if_needed(state, module))
        return checkpoint


def fsdp(sharding_strategy: str = "FULL_SHARD", device_mesh: list[int] | None = None,
         activation_checkpointing: bool = True, cpu_offload: bool = False, state_dict_type: str = "sharded",
         **kwargs: Any):
    """Lightning's FSDPStrategy wrapping the backbone's blocks (and text-encoder layers) as units."""
    from lightning.pytorch.strategies import FSDPStrategy

    if sharding_strategy in HYBRID and not device_mesh:
        raise ConfigError(f"trainer.strategy.sharding_strategy={sharding_strategy} shards within a group and "
                          "replicates across groups: set trainer.strategy.device_mesh=[nodes,GPUs per node].")
    return FSDPStrategy(
        sharding_strategy=sharding_strategy,
        device_mesh=tuple(device_mesh) if device_mesh else None,
        auto_wrap_policy=BackboneUnits("wrap"),
        activation_checkpointing_policy=BackboneUnits("checkpoint") if activation_checkpointing else None,
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,
        **kwargs,
    )


def fsdp2(activation_checkpointing: bool = True, reshard_after_forward: bool = True,
          save_distributed_checkpoint: bool = True, **kwargs: Any):
    """Lightning's ModelParallelStrategy with every process sharding; the module's `configure_model` applies
    `fully_shard` per block through the backbone's policy."""
    strategy = FSDP2Strategy(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
    strategy.fsdp2_options = {"activation_checkpointing": activation_checkpointing,
                              "reshard_after_forward": reshard_after_forward}
    return strategy


def deepspeed(stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False, **kwargs: Any):
    """Lightning's DeepSpeedStrategy (ZeRO stage 1-3, optional CPU offload); DeepSpeed must be installed."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("The deepspeed trainer presets need DeepSpeed, which is not installed: "
                          "pip install deepspeed (on a machine with CUDA), or use trainer=fsdp / trainer=fsdp2.")
    if stage not in (1, 2, 3):
        raise ConfigError(f"trainer.strategy.stage={stage}: DeepSpeed ZeRO stages are 1, 2 and 3.")
    if offload_parameters and stage != 3:
        raise ConfigError("trainer.strategy.offload_parameters=true needs ZeRO stage 3 (trainer.strategy.stage=3).")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters,
                             **kwargs)
