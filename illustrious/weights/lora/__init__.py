"""LoRA, LoHa and LoKr adapters (peft) on the denoiser and text encoders, their file formats, and merging.

    settings = LoraSettings(rank=16, alpha=16, text_encoders=["text_encoders"])
    apply_lora(backbone, settings)        # only adapter weights train from here on
    save_lora(backbone, "x.safetensors", format="comfyui")   # kohya keys (SDXL) / diffusion_model.* (Lumina-2)
    load_lora(backbone, "x.safetensors")  # continue training
    merge_lora(backbone)                  # W + scale * delta, adapters removed
"""

from illustrious.weights.lora.adapters import LoraSettings, apply_lora, merge_lora
from illustrious.weights.lora.files import FORMATS, check_formats, export_paths, load_lora, save_lora

__all__ = ["FORMATS", "LoraSettings", "apply_lora", "export_paths", "load_lora", "merge_lora", "save_lora",
           "setup_lora", "check_formats"]


def setup_lora(backbone, settings: LoraSettings | None) -> None:
    """Apply the configured adapters (nothing for lora=none) and load `settings.weights` into them."""
    if not settings:
        return
    apply_lora(backbone, settings)
    check_formats(backbone, settings.save)  # a format that cannot hold these adapters fails now, not after training
    if settings.weights:
        load_lora(backbone, settings.weights)
