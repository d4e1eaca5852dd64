"""Parts of the GPU throughput benchmark (benchmarks/gpu_throughput.py): the configs of the real-size models with
random weights, the cached-batch data module, the step timer, FLOP counting and the largest-batch search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import lightning as L
import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from illustrious.backbones.base import Conditioning

# What each model's denoiser sees, by size. Real size: the shipped architecture configs (sdxl_unet.json,
# lumina2_transformer.json) with their real text-encoder widths and VAEs. With cached embeddings the text
# encoders never run in the step, so they keep their widths (the denoiser's conditioning shapes) but only one
# layer; `--data pixels` builds them at full depth and encodes pixels and captions in every step.
MODELS = {
    "sdxl": {"tiny": "sdxl_tiny", "text_encoders": ("text_encoder_1", "text_encoder_2"), "denoiser": "unet",
             "vae": "sdxl_vae", "tokens": 77},
    "lumina": {"tiny": "lumina_tiny", "text_encoders": ("text_encoder",), "denoiser": "transformer",
               "vae": "flux_vae", "tokens": 256},
}
REAL_TEXT_ENCODERS = {"text_encoder_1": "sdxl_text_encoder", "text_encoder_2": "sdxl_text_encoder_2",
                      "text_encoder": "gemma2_text_encoder"}


def backbone_overrides(model: str, tiny: bool) -> list[str]:
    return [f"backbone={MODELS[model]['tiny']}"]


def make_real_size(cfg, model: str, full_text_encoders: bool) -> None:
    """Turn a composed tiny-flavour config into the real architecture with random weights, in place: no
    overrides of the shipped denoiser config, the real VAE architecture, real text-encoder widths."""
    spec = MODELS[model]
    with open_dict(cfg):
        cfg.backbone[spec["denoiser"]] = {}
        for key in spec["text_encoders"]:
            cfg.backbone[key] = {} if full_text_encoders else {"num_hidden_layers": 1}
        cfg.backbone.autoencoder = {"_target_": "illustrious.backbones.autoencoders.LatentAutoencoder.from_architecture",
                                    "name": spec["vae"]}
        if model == "sdxl":
            cfg.backbone.tokenizer_max_length = 77  # SDXL's real prompt length
        else:
            cfg.backbone.system_prompt = "diffusers"  # real Lumina-2 keeps its system prompt


# -- data ----------------------------------------------------------------------------------------------------
class CachedBatches(torch.utils.data.Dataset):
    """Whole batches as a trainer reads them from a latent + text-embedding cache: `latents` and a precomputed
    `conditioning` (no autoencoder or text encoder in the step), or `pixels` + `captions` for the uncached
    path. A few distinct batches in pinned memory are cycled, so loading costs what a warm cache costs."""

    def __init__(self, batches: list[dict], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def synthetic_batches(backbone, batch: int, latent_hw: tuple[int, int], tokens: int, cached: bool,
                      pool: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    h, w = latent_hw
    out = []
    for _ in range(pool):
        item = {"captions": ["a cat sitting on a red chair, looking at the viewer"] * batch}
        if cached:
            item["latents"] = torch.randn(batch, backbone.latent_channels, h, w, generator=g)
            item["conditioning"] = synthetic_conditioning(backbone, batch, tokens, g)
        else:
            f = backbone.autoencoder.spatial_factor
            item["pixels"] = torch.rand(batch, 3, h * f, w * f, generator=g) * 2 - 1
        out.append(pin(item))
    return out


def synthetic_conditioning(backbone, batch: int, tokens: int, generator=None) -> Conditioning:
    """Text embeddings of the denoiser's real shapes (on the current default device), every token real: captions
    of one fixed length, so Lumina-2's joint blocks get no attention mask and flash attention can run them
    (its caption refiner always gets the mask). SDXL: bigG's pooled projection too, no mask."""
    width = denoiser_text_width(backbone)
    tokens_ = torch.randn(batch, tokens, width, generator=generator)
    if "clip_g" in backbone.text_encoders:
        pooled = torch.randn(batch, backbone.text_encoders["clip_g"].model.config.projection_dim, generator=generator)
        return Conditioning(tokens=tokens_, pooled=pooled)
    return Conditioning(tokens=tokens_, mask=torch.ones(batch, tokens, dtype=torch.bool))


def denoiser_text_width(backbone) -> int:
    config = backbone.denoiser.config
    return config.cross_attention_dim if "cross_attention_dim" in config else config.cap_feat_dim


def pin(item: dict) -> dict:
    if not torch.cuda.is_available():
        return item
    return {k: (v.pin_memory() if isinstance(v, Tensor) else
                v._map(Tensor.pin_memory) if isinstance(v, Conditioning) else v) for k, v in item.items()}


class CachedDataModule(L.LightningDataModule):
    def __init__(self, batches: list[dict], length: int, num_workers: int = 0):
        super().__init__()
        self.dataset, self.num_workers = CachedBatches(batches, length), num_workers

    def train_dataloader(self):
        # batch_size=None: the dataset yields whole batches (one bucket each), as the cache loader does
        return torch.utils.data.DataLoader(self.dataset, batch_size=None, shuffle=False, num_workers=self.num_workers)


# -- timing --------------------------------------------------------------------------------------------------
def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Per-step wall time (end of one optimizer step to the end of the next, the device synchronised) and the
    loader's share of it (end of a step to the start of the next: fetching the batch and moving it to the
    device)."""

    def __init__(self):
        self.step_s: list[float] = []
        self.wait_s: list[float] = []
        self._last_end = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._last_end is not None:
            self.wait_s.append(time.perf_counter() - self._last_end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        synchronize()
        now = time.perf_counter()
        if self._last_end is not None:
            self.step_s.append(now - self._last_end)
        self._last_end = now


# -- FLOPs ---------------------------------------------------------------------------------------------------
def training_step_flops(backbone, objective, batch: dict, on_meta: bool = False) -> int:
    """FLOPs of one training step's forward and backward pass (torch.utils.flop_counter.FlopCounterMode: matrix
    products, convolutions and attention) with the given cached batch. Model FLOPs: activation-checkpointing
    recomputation is not counted (build the backbone without it)."""
    from torch.utils.flop_counter import FlopCounterMode

    x0, cond = batch["latents"], batch["conditioning"]
    patch = meta_safe_rope(backbone) if on_meta else nullcontext()
    with patch, FlopCounterMode(display=False) as counter:
        noise = torch.randn_like(x0)
        t = torch.rand(x0.shape[0], device=x0.device)
        pred = backbone(objective.add_noise(x0, noise, t), t, cond, batch)
        loss = (pred.float() - objective.target(x0, noise, t).float()).pow(2).mean()
        loss.backward()
    return counter.get_total_flops()


class meta_safe_rope:  # noqa: N801 (a context manager used like a function)
    """On the meta device, Lumina-2's rotary embedder reads caption lengths back from the mask (`.tolist()`),
    which meta tensors cannot do: run it on the CPU with an all-True mask (what synthetic_conditioning gives)
    and hand its results back on the meta device. Nothing it does has FLOPs."""

    def __init__(self, backbone):
        self.embedder = getattr(backbone.denoiser, "rope_embedder", None)

    def __enter__(self):
        if self.embedder is None:
            return self
        e = self.embedder
        cpu = type(e)(theta=e.theta, axes_dim=e.axes_dim, axes_lens=e.axes_lens, patch_size=e.patch_size)
        self.saved = e.forward

        def forward(hidden_states, attention_mask):
            out = cpu(torch.zeros(hidden_states.shape), torch.ones(attention_mask.shape, dtype=torch.bool))
            return tuple(x.to(hidden_states.device) if isinstance(x, Tensor) else x for x in out)

        e.forward = forward
        return self

    def __exit__(self, *exc):
        if self.embedder is not None:
            self.embedder.forward = self.saved
        return False


def meta_batch(backbone, batch: int, latent_hw: tuple[int, int], tokens: int) -> dict:
    with torch.device("meta"):
        return {"latents": torch.randn(batch, backbone.latent_channels, *latent_hw),
                "conditioning": synthetic_conditioning(backbone, batch, tokens)}


# -- the largest batch ---------------------------------------------------------------------------------------
def largest_batch(fits: Callable[[int], bool], cap: int = 1024, guess: int = 1, growth: float = 2.0,
                  tolerance: float = 0.0) -> tuple[int, int | None]:
    """(largest batch size known to fit, smallest known not to fit or None) for a `fits` that is monotone (what
    fits also fits at every smaller size); (0, 1) if not even 1 fits. From `guess` it grows (or shrinks) by
    `growth` to a bracket, then bisects it until the gap is at most `tolerance` x the lower end (0: exact)."""
    def step(b: int, up: bool) -> int:
        return min(cap, max(b + 1, int(b * growth))) if up else max(1, min(b - 1, int(b / growth)))

    b = max(1, min(guess, cap))
    if fits(b):
        lo, hi = b, None
        while hi is None and lo < cap:
            nxt = step(lo, True)
            lo, hi = (nxt, None) if fits(nxt) else (lo, nxt)
        if hi is None:
            return cap, None
    else:
        lo, hi = 0, b
        while lo == 0 and hi > 1:
            nxt = step(hi, False)
            lo, hi = (nxt, hi) if fits(nxt) else (0, nxt)
        if lo == 0:
            return 0, 1
    while hi - lo > max(1, int(tolerance * lo)):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def line_fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of the line through the smallest- and largest-batch (batch, peak GiB) points."""
    points = sorted(set(points))
    if len(points) < 2 or points[0][0] == points[-1][0]:
        return None
    (b0, m0), (b1, m1) = points[0], points[-1]
    slope = (m1 - m0) / (b1 - b0)
    return (m0 - slope * b0, slope) if slope > 0 else None


def memory_guess(points: list[tuple[int, float]], capacity_gib: float, intercept: float | None = None,
                 headroom: float = 0.93) -> int | None:
    """The batch that a straight line through measured (batch, peak GiB) points puts at `headroom` x capacity:
    weights, gradients and optimizer states are the intercept (or `intercept`, from another fit: checkpointing
    changes only the slope), activations the slope."""
    if intercept is not None and points:
        b, m = max(points)
        fit = (intercept, (m - intercept) / b) if m > intercept else None
    else:
        fit = line_fit(points)
    if fit is None:
        return None
    c, slope = fit
    return max(1, int((capacity_gib * headroom - c) / slope))


def free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
