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
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    if isinstance(settings.get("strategy"), dict):  # trainer=ddp/fsdp/fsdp2/deepspeed_*: a configured strategy
        settings["strategy"] = instantiate(cfg.trainer.strategy, _convert_="all")
    return L.Trainer(**settings, callbacks=callbacks, logger=logger, plugins=plugins)


def build_module(cfg: DictConfig, backbone=None):
    """The LightningModule a config describes (the backbone may be passed in already built)."""

    from illustrious.module import DiffusionModule
    from illustrious.weights.run_config import stored_run_config

    backbone = backbone if backbone is not None else instantiate(cfg.backbone)
    optim = instantiate(cfg.optim)
    return DiffusionModule(
        backbone=backbone,
        objective=instantiate(cfg.objective),
        optimizer=optim.optimizer,
        lr_scheduler=optim.get("lr_scheduler"),
        lr=optim.lr,
        text_encoder_lr=optim.get("text_encoder_lr"),
        sampling=OmegaConf.to_container(cfg.sampling, resolve=True),
        config=stored_run_config(cfg),
    )


def resume_path(cfg: DictConfig) -> str | None:
    """An explicit `ckpt_path`, else the run's last checkpoint when `resume` is on and one exists."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    last = Path(cfg.output_dir) / "checkpoints" / "last.safetensors"
    if cfg.resume and last.is_file():
        log.info("Resuming from %s", last)
        return str(last)
    return None


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Fit the configured module; returns the final metrics and the objects (trainer, module, datamodule)."""
    validate(cfg)
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)  # Lightning checks trainer settings here, before anything heavy is built
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    if hasattr(datamodule, "check"):
        datamodule.check()  # missing or empty data stops the run here, before any model is built
    backbone = instantiate(cfg.backbone)
    if hasattr(datamodule, "check_pixel_multiple"):
        datamodule.check_pixel_multiple(backbone.pixel_multiple)
    module = build_module(cfg, backbone)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    metrics["global_step"] = trainer.global_step
    if trainer.is_global_zero:  # one writer when several processes train
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}
