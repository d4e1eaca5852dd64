"""DiffusionModule: the one place where a backbone, an objective and a batch meet."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor

from illustrious.backbones.base import Backbone, Conditioning
from illustrious.eval.validation_loss import ValidationLoss
from illustrious.objectives.base import Objective


class DiffusionModule(L.LightningModule):
    """Trains any `Backbone` with any `Objective`.

    `optimizer` and `lr_scheduler` are partials (Hydra `_partial_: true`) completed with the parameter
    groups and the optimizer; `lr` is the denoiser's learning rate and `text_encoder_lr` the text
    encoders' (None = same as `lr`, 0 = frozen); `lrs` sets single groups (`text_encoder_1: 4.5e-6`,
    `text_encoder_2: 0`, see `Backbone.components`). `gradient_checkpointing` names the groups that
    recompute activations in the backward pass (`denoiser`, `text_encoders` or single encoders).
    `validation` scores held-out batches (illustrious.eval.validation_loss); None = plain defaults.
    """

    # Read by Lightning's ThroughputMonitor to report FLOP/s and MFU; None until something measures it.
    flops_per_batch: int | None = None

    def __init__(self, backbone: Backbone, objective: Objective, optimizer: Callable, lr: float,
                 text_encoder_lr: float | None = None, lr_scheduler: Callable | None = None,
                 sampling: Mapping | None = None, config: Mapping | None = None, lrs: Mapping | None = None,
                 gradient_checkpointing: Sequence[str] = (), validation: ValidationLoss | None = None):
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.lrs = {"denoiser": lr, "text_encoders": lr if text_encoder_lr is None else text_encoder_lr, **(lrs or {})}
        self.backbone.parameter_groups(self.lrs)  # freeze now, so summaries and the first step agree
        self.backbone.enable_gradient_checkpointing(list(gradient_checkpointing or ()))
        self.sampling = dict(sampling or {})
        # what checkpoints store about the run (group choices and plain values, never a target to run):
        # illustrious.weights.run_config rebuilds the run from it for sampling, export and evaluation
        self.config = dict(config or {})
        self.validation = validation if validation is not None else ValidationLoss()

    def configure_model(self) -> None:
        """Under FSDP2 (`trainer=fsdp2`, Lightning's ModelParallelStrategy) shard the backbone per block."""
        options = getattr(self._trainer.strategy, "fsdp2_options", None) if self._trainer is not None else None
        if options is None or getattr(self, "_sharded", False):
            return
        from illustrious.backbones.parallel import apply_fsdp2

        apply_fsdp2(self.backbone, self.device_mesh["data_parallel"], **options)
        self.backbone.autoencoder.to(self.device)  # replicated: the strategy moves only sharded modules
        self._sharded = True

    # -- training -----------------------------------------------------------------------------------------
    def latents(self, batch: Mapping) -> Tensor:
        if "latents" in batch:
            return batch["latents"]
        return self.backbone.encode_image(batch["pixels"])

    def conditioning(self, batch: Mapping) -> Conditioning:
        """The batch's precomputed text conditioning (`conditioning`: a text-embedding cache, or a benchmark's
        fixed embeddings) when it carries one, else its `captions` encoded now."""
        cond = batch.get("conditioning")
        if cond is None:
            return self.backbone.encode_text(batch["captions"])
        if not self.backbone.text_encoders_frozen:  # precomputed states cannot follow training encoders
            raise RuntimeError("The batch carries precomputed `conditioning` while a text encoder trains; freeze the "
                               "text encoders (optim.text_encoder_lr=0) or drop the precomputed conditioning.")
        return cond

    def training_step(self, batch: Mapping, batch_idx: int) -> Tensor:
        x0 = self.latents(batch)
        cond = self.conditioning(batch)
        noise = self.objective.sample_noise(x0)
        t = self.objective.sample_t(x0.shape[0], image_seq_len=self.backbone.image_seq_len(x0), device=x0.device,
                                    progress=self.training_progress())
        x_t = self.objective.add_noise(x0, self.objective.input_noise(noise), t)
        pred = self.backbone(x_t, t, cond, batch)
        target = self.objective.target(x0, noise, t)
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        loss = (per_sample * self.objective.loss_weight(t)).mean()
        # the mean over all processes (one scalar all-reduce under DDP/FSDP): the loss of the global batch
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def training_progress(self) -> float | None:
        """The fraction of training done: optimizer steps over the run's total (trainer.max_steps, or what
        max_epochs comes to: Lightning's estimated_stepping_batches); None outside a Trainer or without an end."""
        trainer = self._trainer
        if trainer is None:
            return None
        total = trainer.estimated_stepping_batches  # -1 for an iterable dataset without max_steps
        if not 0 < total < math.inf:
            return None
        return trainer.global_step / total

    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        x0 = self.latents(batch)
        cond = self.backbone.encode_text(batch["captions"])
        metrics = self.validation(self.backbone, self.objective, x0, cond, batch, batch_idx, self.global_rank)
        self.log_dict(metrics, batch_size=x0.shape[0], sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.backbone.parameter_groups(self.lrs))
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def on_train_start(self) -> None:
        # A resumed run restores each group's learning rate as the optimizer saved it: the next step's value
        # under the schedule of the run that saved it. When the schedule changed since (a run extended with a
        # larger trainer.max_steps), continue on the new one; unchanged, this sets the same value.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas is None:
                continue
            for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, lambdas, strict=True):
                group["lr"] = base * fn(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_before_optimizer_step(self, optimizer) -> None:
        # the norm before clipping, every logging step only (it costs a pass over all gradients)
        if self.trainer.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), batch_size=1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning refuses to clip for optimizers that unscale inside step() (fused AdamW) under mixed
        # precision even when no gradient scaler exists (bf16); without a scaler the gradients are true
        # gradients and clipping them directly is exact.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if gradient_clip_val and scaler is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from illustrious.weights.run_config import STORED_KEY

        checkpoint[STORED_KEY] = self.config

    # -- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], *, height: int, width: int, **overrides) -> Tensor:
        """Images for `prompts` with this module's sampling settings (overridable); pixels in [-1, 1]."""
        from illustrious.sampling.generate import generate

        settings = {**self.sampling, **overrides}
        return generate(self.backbone, self.objective, prompts, height=height, width=width, **settings)
