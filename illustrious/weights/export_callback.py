"""Export at the end of training: a Lightning callback writing the trained backbone in the chosen formats.

Off by default; switch it on from the command line:
    python -m illustrious.run backbone=sdxl backbone.weights=... \\
        '+callbacks.export={_target_: illustrious.weights.export_callback.ExportAtEnd, formats: [single_file, diffusers]}'
It runs after weight averaging has copied the EMA weights in (train.build_trainer orders EMA first), on rank 0.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback


class ExportAtEnd(Callback):
    def __init__(self, formats: list[str], out_dir: str | None = None, dtype: str = "fp16", overwrite: bool = False,
                 title: str | None = None):
        self.formats = list(formats)
        self.out_dir = out_dir
        self.dtype = dtype
        self.overwrite = overwrite
        self.title = title

    def setup(self, trainer, pl_module, stage: str) -> None:
        from illustrious.weights.export import check_export, formats_for

        # say so before training, not after it
        unknown = set(self.formats) - set(formats_for(pl_module.backbone))
        if unknown:
            from illustrious.errors import ConfigError

            raise ConfigError(f"callbacks.export.formats: {sorted(unknown)} are not export formats of "
                              f"{type(pl_module.backbone).__name__} ({', '.join(formats_for(pl_module.backbone))}).")
        for fmt in self.formats:  # a pixel-space model, an unknown dtype, a prediction no format marks
            check_export(pl_module.backbone, pl_module.objective, fmt, self.dtype)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from illustrious.weights.export import export_backbone

        out_dir = Path(self.out_dir or Path(trainer.default_root_dir) / "export")
        for fmt in self.formats:
            out = out_dir / (fmt if fmt == "diffusers" else f"{fmt}.safetensors")
            export_backbone(pl_module.backbone, pl_module.objective, fmt, out, dtype=self.dtype,
                            overwrite=self.overwrite, title=self.title, run_config=pl_module.config,
                            provenance={"global_step": trainer.global_step, "at": "end of training"})
