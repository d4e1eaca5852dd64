"""Why a constant prefix before the caption stalls the from-scratch lumina_tiny (issue 7, item 2).

Trains lumina_tiny (flow, shapes 32x32, batch 32, lr 2e-3) for a short budget under prefix variants, then
judges 64 held-out prompts (eval/composition.py) and measures where attention mass goes:

- in Gemma (causal): the share of each caption token's attention that lands on prefix tokens;
- in the Next-DiT's context refiner (caption tokens among themselves) and its joint layers (image queries
  over [caption tokens; image tokens]): the share on prefix tokens, on caption tokens, on image tokens;
- how much of the caption embedding the DiT receives varies with the prompt at all (between-prompt
  variance / total variance of the caption-token states after the DiT's caption embedder).

Variants (each one config away from the default run):
  none           no prefix (the tiny default)
  full           Lumina-2's 25-word system prompt + " <Prompt Start> "
  short          "Generate an image. <Prompt Start> "
  full_dit_drop  full prefix read by Gemma, but its states dropped before the DiT (the DiT sees the caption only)
  full_frozen    full prefix, text encoder frozen at its random init (text_encoder_lr=0)
  none_frozen    no prefix, text encoder frozen
  full_dit_drop_frozen  full prefix read by a frozen Gemma, its states dropped before the DiT

    OMP_NUM_THREADS=1 .venv/bin/python experiments/system_prompt_study/run_study.py --steps 150 \
        --variants none full full_dit_drop --out /tmp/prefix_study
Results: <out>/<variant>/study.json and a table on stdout. Numbers and the write-up: README.md beside this.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from illustrious.backbones.text_encoders import LUMINA_SYSTEM_PROMPT, GemmaPromptEncoder

SHORT_PROMPT = "Generate an image."
VARIANTS = {
    "none": {"system_prompt": ""},
    "full": {"system_prompt": LUMINA_SYSTEM_PROMPT},
    "short": {"system_prompt": SHORT_PROMPT},
    "full_dit_drop": {"system_prompt": LUMINA_SYSTEM_PROMPT, "drop_prefix": True},
    "full_frozen": {"system_prompt": LUMINA_SYSTEM_PROMPT, "text_encoder_lr": 0},
    "none_frozen": {"system_prompt": "", "text_encoder_lr": 0},
    "full_dit_drop_frozen": {"system_prompt": LUMINA_SYSTEM_PROMPT, "drop_prefix": True, "text_encoder_lr": 0},
}


def prefix_lengths(encoder: GemmaPromptEncoder, prompts: list[str]) -> list[int]:
    """Per prompt: how many leading tokens (bos included) precede the caption's own tokens."""
    tok = encoder.tokenizer
    full = [len(tok(encoder.format(p)).input_ids) for p in prompts]
    bare = [len(tok(p).input_ids) - 1 for p in prompts]  # without its bos
    return [f - b for f, b in zip(full, bare, strict=True)]


class CaptionOnlyEncoder(GemmaPromptEncoder):
    """Gemma reads prefix + caption; the DiT receives only the caption tokens' states (right-padded)."""

    def forward(self, prompts):
        states, mask = super().forward(prompts)
        # an empty (dropped) caption is encoded bare, <bos> only: keep that one state rather than none
        skip = [min(k, int(m.sum()) - 1) for m, k in zip(mask, prefix_lengths(self, prompts), strict=True)]
        lengths = [int(m.sum()) - k for m, k in zip(mask, skip, strict=True)]
        out = states.new_zeros(len(prompts), max(lengths), states.shape[-1])
        new_mask = torch.zeros(len(prompts), max(lengths), dtype=torch.bool, device=mask.device)
        for i, (k, n) in enumerate(zip(skip, lengths, strict=True)):
            out[i, :n] = states[i, k:k + n]
            new_mask[i, :n] = True
        return out, new_mask


class RecordingLumina2Attention:
    """diffusers' Lumina2AttnProcessor2_0 with an explicit softmax, so the attention weights can be kept."""

    def __init__(self, store: list, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None,
                 base_sequence_length=None):
        from diffusers.models.embeddings import apply_rotary_emb

        b = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = q.shape[-1] // attn.heads
        kv_heads = k.shape[-1] // head_dim
        q, k, v = q.view(b, -1, attn.heads, head_dim), k.view(b, -1, kv_heads, head_dim), v.view(b, -1, kv_heads, head_dim)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, use_real=False)
            k = apply_rotary_emb(k, image_rotary_emb, use_real=False)
        scale = attn.scale
        if base_sequence_length is not None:
            scale = math.sqrt(math.log(hidden_states.shape[1], base_sequence_length)) * attn.scale
        rep = attn.heads // kv_heads
        k = k.repeat_interleave(rep, dim=2) if rep > 1 else k
        v = v.repeat_interleave(rep, dim=2) if rep > 1 else v
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * scale
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool().view(b, 1, 1, -1), float("-inf"))
        weights = logits.softmax(-1)
        self.store.append((self.name, weights.mean(1).detach()))  # (B, queries, keys), mean over heads
        out = (weights @ v).transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


@torch.no_grad()
def attention_report(backbone, prompts: list[str], pixels: torch.Tensor, t_values=(0.3, 0.7), seed: int = 0) -> dict:
    """Attention shares (prefix / caption / image) in Gemma, the DiT's context refiner and its joint layers."""
    encoder = backbone.text_encoders["gemma"]
    dit = backbone.denoiser
    drop = isinstance(encoder, CaptionOnlyEncoder)
    skip = [0] * len(prompts) if drop else prefix_lengths(encoder, prompts)
    report = {}

    # Gemma: share of caption-token attention on prefix tokens (layer by layer, causal)
    batch = encoder.tokenizer([encoder.format(p) for p in prompts], padding="longest", return_tensors="pt")
    implementation = encoder.model.config._attn_implementation
    encoder.model.set_attn_implementation("eager")  # sdpa returns no attention weights
    try:
        out = encoder.model(batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    finally:
        encoder.model.set_attn_implementation(implementation)
    full_skip = prefix_lengths(encoder, prompts)
    for li, a in enumerate(out.attentions):
        a = a.mean(1)  # (B, L, L)
        shares = [a[i, k:int(m.sum()), :k].sum(-1).mean() for i, (k, m) in
                  enumerate(zip(full_skip, batch.attention_mask, strict=True)) if k > 0]
        report[f"gemma_layer{li}_caption_to_prefix"] = float(torch.stack(shares).mean()) if shares else 0.0

    cond = backbone.encode_text(prompts)
    # how much of what the DiT receives about the caption depends on the prompt at all
    emb = dit.time_caption_embed.caption_embedder(cond.tokens)
    caps = [emb[i, k:int(m.sum())] for i, (k, m) in enumerate(zip(skip, cond.mask, strict=True))]
    flat = torch.cat(caps)
    between = torch.stack([c.mean(0) for c in caps]).var(0).sum()
    report["caption_embed_between_prompt_var_share"] = float(between / flat.var(0).sum())

    store: list = []
    originals = {}
    for name, module in dit.named_modules():
        if type(module).__name__ == "Attention" and (name.startswith("context_refiner") or name.startswith("layers")):
            originals[name] = module.processor
            module.set_processor(RecordingLumina2Attention(store, name))
    try:
        gen = torch.Generator().manual_seed(seed)
        x0 = backbone.encode_image(pixels)
        for t in t_values:
            noise = torch.randn(x0.shape, generator=gen)
            x_t = (1 - t) * x0 + t * noise
            backbone(x_t, torch.full((len(prompts),), t), cond)
    finally:
        for name, module in dit.named_modules():
            if name in originals:
                module.set_processor(originals[name])

    sums: dict[str, list] = {}
    for name, w in store:
        cap_len = cond.mask.sum(1).tolist()
        for i, (k, n) in enumerate(zip(skip, cap_len, strict=True)):
            if name.startswith("context_refiner"):
                rows = w[i, k:n, :n]  # caption queries over caption keys
                sums.setdefault("refiner_caption_to_prefix", []).append(rows[:, :k].sum(-1).mean())
            else:
                rows = w[i, n:n + 64]  # image queries over [caption; image]
                sums.setdefault("joint_image_to_prefix", []).append(rows[:, :k].sum(-1).mean())
                sums.setdefault("joint_image_to_caption", []).append(rows[:, k:n].sum(-1).mean())
                sums.setdefault("joint_image_to_image", []).append(rows[:, n:].sum(-1).mean())
                per_token = rows[:, k:n].sum(0) / rows.shape[0]
                sums.setdefault("joint_image_max_caption_token", []).append(per_token.max())
    report.update({k: float(torch.stack(v).mean()) for k, v in sums.items()})
    report["prefix_tokens_seen_by_dit"] = 0 if drop else float(sum(skip) / len(skip))
    report["caption_tokens"] = float(sum(int(m.sum()) for m in cond.mask) / len(prompts) - report["prefix_tokens_seen_by_dit"])
    return report


def training_curves(logdir: Path) -> dict:
    """Loss and gradient norm (before clipping at 1.0) from the run's TensorBoard log, by quarter of the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir)).Reload()
    curves = {}
    for tag in ("train/loss", "train/grad_norm"):
        if tag in events.Tags()["scalars"]:
            values = torch.tensor([e.value for e in events.Scalars(tag)])
            curves[tag.split("/")[1] + "_by_quarter"] = [round(float(q.mean()), 4) for q in values.chunk(4)]
    return curves


def run_variant(name: str, steps: int, out: Path, batch_size: int, extra: list[str]) -> dict:
    import lightning as L
    from hydra import compose, initialize_config_dir

    from illustrious.config import CONF_DIR, instantiate
    from illustrious.eval.composition import chance_scores, judge, summarize
    from illustrious.train import build_module, build_trainer

    spec = VARIANTS[name]
    overrides = ["backbone=lumina_tiny", "objective=flow", f"trainer.max_steps={steps}",
                 f"data.batch_size={batch_size}", f"output_dir={out / name}", "resume=false",
                 f"backbone.system_prompt='{spec['system_prompt']}'", "callbacks.samples=null",
                 "callbacks.composition=null", "callbacks.progress=null", "callbacks.checkpoint=null",
                 "callbacks.memory_check=null", *extra]
    if "text_encoder_lr" in spec:
        overrides.append(f"optim.text_encoder_lr={spec['text_encoder_lr']}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    backbone = instantiate(cfg.backbone)
    if spec.get("drop_prefix"):
        old = backbone.text_encoders["gemma"]
        backbone.text_encoders["gemma"] = CaptionOnlyEncoder(old.tokenizer, old.model, old.system_prompt, old.max_length)
    module = build_module(cfg, backbone)
    layouts = datamodule.eval_layouts(64)
    prompts = [layout.sentence() for layout in layouts]
    images = torch.stack([torch.as_tensor(datamodule.held_out[i]["pixels"]) for i in range(64)])
    module.eval()
    result = {"variant": name, "steps": steps, "init": attention_report(module.backbone, prompts, images)}
    module.train()
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    module.eval()
    result["trained"] = attention_report(module.backbone, prompts, images)
    with torch.no_grad():
        pixels = module.generate(prompts, height=32, width=32, seed=1234)
    scores = judge(pixels, layouts)
    result["figures"] = summarize(scores)
    result["chance"] = chance_scores(pixels, layouts)
    result.update(training_curves(out / name / "tensorboard"))
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "study.json").write_text(json.dumps(result, indent=2))
    from illustrious.eval.composition import to_uint8
    from illustrious.sampling.grid import image_grid

    image_grid(to_uint8(pixels), prompts, columns=8).save(out / name / "samples.png")
    return result


def init_sweep(out: Path, words=(0, 1, 2, 4, 8, 16, 25)) -> list[dict]:
    """No training: attention shares of the freshly initialised model against prefix length (first N words
    of Lumina-2's system prompt), the same seed for every length."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from illustrious.config import CONF_DIR, instantiate

    rows = []
    for n in words:
        prefix = " ".join(LUMINA_SYSTEM_PROMPT.split()[:n])
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["backbone=lumina_tiny", f"backbone.system_prompt='{prefix}'",
                                               f"output_dir={out}"])
        L.seed_everything(cfg.seed)
        backbone = instantiate(cfg.backbone).eval()
        datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
        prompts = [layout.sentence() for layout in datamodule.eval_layouts(64)]
        images = torch.stack([torch.as_tensor(datamodule.held_out[i]["pixels"]) for i in range(64)])
        rows.append({"prefix_words": n, **attention_report(backbone, prompts, images)})
        r = rows[-1]
        print(f"{n:3d} words, {r['prefix_tokens_seen_by_dit']:4.1f} tokens: gemma caption->prefix "
              f"{r['gemma_layer0_caption_to_prefix']:.2f}/{r['gemma_layer1_caption_to_prefix']:.2f}, refiner "
              f"caption->prefix {r['refiner_caption_to_prefix']:.2f}, joint image->prefix {r['joint_image_to_prefix']:.2f} "
              f"->caption {r['joint_image_to_caption']:.2f}, prompt var share {r['caption_embed_between_prompt_var_share']:.2f}",
              flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "init_sweep.json").write_text(json.dumps(rows, indent=2))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("outputs/system_prompt_study"))
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every variant")
    parser.add_argument("--init-sweep", action="store_true", help="only the untrained prefix-length sweep")
    args = parser.parse_args()
    if args.init_sweep:
        init_sweep(args.out)
        return
    rows = []
    for name in args.variants:
        r = run_variant(name, args.steps, args.out, args.batch_size, args.override)
        rows.append(r)
        f, tr, init = r["figures"], r["trained"], r["init"]
        print(f"{name:14s} comp {f['composition']:.3f} shape {f['shape']:.3f} bg {f['background']:.3f} "
              f"std {f['cleanliness']:.1f} | joint img->prefix {init.get('joint_image_to_prefix', 0):.2f}->"
              f"{tr.get('joint_image_to_prefix', 0):.2f} img->caption {init['joint_image_to_caption']:.2f}->"
              f"{tr['joint_image_to_caption']:.2f} | gemma caption->prefix {tr.get('gemma_layer0_caption_to_prefix', 0):.2f} "
              f"| prompt var share {init['caption_embed_between_prompt_var_share']:.2f}->"
              f"{tr['caption_embed_between_prompt_var_share']:.2f} | grad norm {r.get('grad_norm_by_quarter')} | "
              f"{r['train_seconds']} s", flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
