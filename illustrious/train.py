"""train(cfg) -> (metrics, objects): instantiate the parts, fit, report. A plain function, usable from notebooks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from illustrious.config import instantiate, validate

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig):
    import lightning as L
    from lightning.pytorch.callbacks import ProgressBar, WeightAveraging

    from illustrious.checkpoint_io import SafetensorsCheckpointIO

    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if cfg.trainer.get("enable_progress_bar") is False:  # the switch wins over a configured bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # Weight averaging (EMA) copies the averaged weights into the model at the end of training: it must
    # run before the callbacks that sample then, wherever the config lists it.
    callbacks.sort(key=lambda c: not isinstance(c, WeightAveraging))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    plugins = [SafetensorsCheckpointIO(allow_pickle=cfg.allow_pickle)]
    plugins += slurm_environment()
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    settings.update(validation_schedule(cfg.get("validation"), settings.get("accumulate_grad_batches") or 1))
    if isinstance(settings.get("strategy"), dict):  # trainer=ddp/fsdp/fsdp2/deepspeed_*: a configured strategy
        settings["strategy"] = instantiate(cfg.trainer.strategy, _convert_="all")
    return L.Trainer(**settings, callbacks=callbacks, logger=logger, plugins=plugins)


def validation_schedule(validation, accumulate: int = 1) -> dict:
    """Lightning's validation settings from `validation.*`: every N optimizer steps across epoch boundaries
    (val_check_interval counts batches), at most `batches` batches; off (nothing changed) when N is 0."""
    if not validation or not validation.get("every_n_steps"):
        return {}
    batches = validation.get("batches")
    return {"val_check_interval": int(validation.every_n_steps) * accumulate, "check_val_every_n_epoch": None,
            "limit_val_batches": 1.0 if batches is None else int(batches)}


def slurm_environment() -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: Lightning's SIGUSR1 handler would write
    its own `hpc_ckpt_N.ckpt` beside our checkpoints (and resume from it first). Our handler
    (illustrious.preemption) saves the run's verified checkpoint on SIGUSR1/SIGUSR2/SIGTERM and RunCheckpoint
    requeues the job with `scontrol requeue`."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def build_module(cfg: DictConfig, backbone=None):
    """The LightningModule a config describes (the backbone may be passed in already built)."""

    from illustrious.eval.validation_loss import ValidationLoss
    from illustrious.module import DiffusionModule
    from illustrious.weights.lora import setup_lora
    from illustrious.weights.run_config import stored_run_config

    backbone = backbone if backbone is not None else instantiate(cfg.backbone)
    setup_lora(backbone, instantiate(cfg.lora) if cfg.get("lora") else None)  # before the optimizer groups
    optim = instantiate(cfg.optim)
    return DiffusionModule(
        backbone=backbone,
        objective=instantiate(cfg.objective),
        optimizer=optim.optimizer,
        lr_scheduler=optim.get("lr_scheduler"),
        lr=optim.lr,
        text_encoder_lr=optim.get("text_encoder_lr"),
        lrs=optim.get("lrs"),
        gradient_checkpointing=cfg.get("gradient_checkpointing") or (),
        sampling=OmegaConf.to_container(cfg.sampling, resolve=True),
        config=stored_run_config(cfg),
        validation=ValidationLoss(bins=cfg.validation.bins, seed=cfg.validation.seed) if cfg.get("validation") else None,
    )


def checkpoint_dir(cfg: DictConfig) -> Path:
    node = (cfg.get("callbacks") or {}).get("checkpoint")
    return Path(node.dirpath) if node is not None and node.get("dirpath") else Path(cfg.output_dir) / "checkpoints"


def resume_checkpoint(cfg: DictConfig) -> tuple[Path, dict] | None:
    """The verified checkpoint the run continues from (illustrious.checkpoint_folder.resume_checkpoint)."""
    from illustrious.checkpoint_folder import resume_checkpoint as choose
    from illustrious.checkpoint_io import refused_as_config_error

    with refused_as_config_error():  # the message names the file and what to do: no stack trace
        return choose(checkpoint_dir(cfg), cfg.get("ckpt_path"), bool(cfg.resume), bool(cfg.allow_pickle))


def save_lora_files(backbone, output_dir) -> None:
    """The trained adapters (EMA ones when EMA is on) in each of `lora.save`'s formats."""
    from illustrious.weights.lora import export_paths, save_lora

    for fmt in backbone.lora_settings.save:
        log.info("LoRA (%s) written to %s", fmt, save_lora(backbone, export_paths(output_dir)[fmt], fmt))


def check_sharded_resume(strategy, folder: Path) -> None:
    from illustrious.strategies import FSDP2Strategy

    if not isinstance(strategy, FSDP2Strategy):
        from illustrious.errors import ConfigError

        raise ConfigError(
            f"{folder} is a sharded checkpoint (a folder written by trainer=fsdp2); resume it with trainer=fsdp2 (any "
            "number of processes), or write one file first: python -m illustrious.consolidate "
            f"{folder} <file.safetensors> --allow-pickle, then ckpt_path=<file.safetensors> resume=false.")


def resume_path(cfg: DictConfig) -> str | None:
    """The run's newest complete checkpoint when `resume` is on, else an explicit `ckpt_path`, else None."""
    found = resume_checkpoint(cfg)
    return str(found[0]) if found else None


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Fit the configured module; returns the final metrics and the objects (trainer, module, datamodule)."""
    validate(cfg)
    from illustrious import preemption

    # Stop signals are recorded from here, not only once fit starts: SLURM's requeue signal while the model loads
    # (minutes for real-size weights) would otherwise kill the process unrequeued; recorded, it is acted on at the
    # end of the first step (checkpoint, `scontrol requeue`, exit 128+signal) like one that comes during training.
    with preemption.listen():
        trainer, module, datamodule = fit(cfg)

    if getattr(module.backbone, "lora_settings", None) and trainer.is_global_zero:
        save_lora_files(module.backbone, cfg.output_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    metrics["global_step"] = trainer.global_step
    if trainer.is_global_zero:  # one writer when several processes train
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def fit(cfg: DictConfig):
    """Build the trainer, data, model and resume state a config describes, and fit; (trainer, module, datamodule)."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)  # Lightning checks trainer settings here, before anything heavy is built
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    if hasattr(datamodule, "check"):
        datamodule.check()  # missing or empty data stops the run here, before any model is built
    resume = resume_checkpoint(cfg)  # read and verified now: a bad checkpoint stops the run before the model
    backbone = instantiate(cfg.backbone)
    if hasattr(datamodule, "check_pixel_multiple"):
        datamodule.check_pixel_multiple(backbone.pixel_multiple)
    module = build_module(cfg, backbone)
    from illustrious.weights.markers import check_objective

    # pretrained weights train only with the objective they were trained with, unless told otherwise
    check_objective(getattr(backbone, "pretrained_prediction", None), module.objective,
                    getattr(backbone, "check_prediction_type", True))
    ckpt_path = None
    if resume is not None:
        ckpt_path = str(resume[0])
        if resume[1] is not None:  # handed to the checkpoint plugin, so the trainer does not read the file again
            trainer.strategy.checkpoint_io.preload(*resume)
        else:  # a verified sharded folder: only the sharded strategy reads it (without running pickled code)
            check_sharded_resume(trainer.strategy, resume[0])
        resume = None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, module, datamodule
