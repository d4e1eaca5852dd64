"""`python -m illustrious.inspect_captions data=folder data.root=/data/anime captions=illustrious backbone=sdxl`

Shows what the model is fed: for a few samples, the raw metadata (tags by category, rating, score, date,
derived tags) and ten augmented captions (epochs 0-9 of the pipeline's draw), each with its token counts
per text encoder and chunk (`clip: 75+75+12 = 162 tokens, 3 chunks`; `gemma: 58 tokens`), marking captions
that the encoder truncates. Only tokenizers are loaded, never model weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from illustrious.backbones.prompt_chunks import chunk_count
from illustrious.backbones.system_prompts import resolve_system_prompt, with_system_prompt
from illustrious.backbones.text_encoders import load_tokenizer
from illustrious.config import CONF_DIR, instantiate
from illustrious.data.captions import CaptionKey

log = logging.getLogger(__name__)


def clip_counter(tokenizer, max_chunks: int) -> Callable[[str], str]:
    piece = tokenizer.model_max_length - 2

    def count(caption: str) -> str:
        n = len(tokenizer(caption, add_special_tokens=False, verbose=False).input_ids)
        chunks = chunk_count(n, piece, max_chunks)
        parts = [min(piece, n - k * piece) for k in range(chunks)] if n else [0]
        kept = sum(parts)
        cut = f", {n - kept} truncated" if n > kept else ""
        return f"{'+'.join(map(str, parts))} = {kept} tokens in {chunks} chunk{'s' if chunks > 1 else ''}{cut}"

    return count


def gemma_counter(tokenizer, system_prompt: str, max_length: int) -> Callable[[str], str]:
    def count(caption: str) -> str:
        n = len(tokenizer(with_system_prompt(system_prompt, caption), verbose=False).input_ids)
        own = len(tokenizer(caption, add_special_tokens=False, verbose=False).input_ids)
        cut = f", {n - max_length} truncated" if n > max_length else ""
        return f"{min(n, max_length)} tokens ({own} of the caption){cut}"

    return count


def token_counters(backbone: DictConfig) -> dict[str, Callable[[str], str]]:
    """Per text encoder, a caption -> token-count description, from the backbone config's tokenizers."""
    weights = backbone.get("weights")
    if "tokenizer_1" in backbone or "sdxl" in str(backbone.get("_target_", "")):
        names = ((backbone.get("tokenizer_1"), backbone.get("tokenizer_2")) if weights is None
                 else (str(Path(weights) / "tokenizer"), str(Path(weights) / "tokenizer_2")))
        counters = {}
        for label, name in zip(("clip_l", "clip_g"), names, strict=True):
            tok = load_tokenizer(name)
            if backbone.get("tokenizer_max_length"):
                tok.model_max_length = int(backbone.tokenizer_max_length)
            counters[label] = clip_counter(tok, int(backbone.get("max_chunks", 1)))
        return counters
    name = backbone.get("tokenizer") if weights is None else str(Path(weights) / "tokenizer")
    return {"gemma": gemma_counter(load_tokenizer(name), resolve_system_prompt(backbone.get("system_prompt", "diffusers")),
                                   int(backbone.get("max_sequence_length", 256)))}


def inspect(records: list[tuple[str, dict, object]], pipeline, counters: dict, seed: int, variants: int = 10,
            print_fn: Callable[[str], None] = print) -> None:
    """`records`: (name, raw metadata to show, caption source) per sample, with its dataset index as name."""
    for name, raw, source in records:
        index = int(name) if str(name).isdigit() else 0
        print_fn(f"=== sample {name}")
        for key, value in raw.items():
            print_fn(f"  {key}: {value}")
        for epoch in range(variants):
            caption = pipeline(source, CaptionKey(seed, epoch, index))
            print_fn(f"  [epoch {epoch}] {caption!r}")
            for encoder, count in counters.items():
                print_fn(f"      {encoder}: {count(caption)}")


def folder_records(datamodule, n: int) -> list[tuple[str, dict, object]]:
    """The first `n` training rows of a folder (with their annotations) and their caption records."""
    from illustrious.data.captions.source import record_from_row
    from illustrious.data.index.labels import caption_variants
    from illustrious.data.index.sidecars import TAG_CATEGORIES

    datamodule.check()  # scan (or reuse the manifest), select, join the annotations
    table = datamodule.selection.table.slice(0, n)
    shown = ("path", "caption", "tags_character", "tags_copyright", "tags_artist", "tags_general", "tags_meta",
             "rating", "score", "created", "score_percentile", "score_tag", "year_tag", "control_tags")
    out = []
    for i, row in enumerate(table.to_pylist()):
        tags = {c: row[f"tags_{c}"] or [] for c in TAG_CATEGORIES}
        variants = caption_variants(row["caption"], tags, datamodule.txt_style)
        out.append((str(i), {k: row.get(k) for k in shown if k in row},
                    record_from_row(row, datamodule.txt_style, variants=variants)))
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="inspect_captions", version_base="1.3")
def main(cfg: DictConfig) -> None:
    pipeline = instantiate(cfg.captions)
    counters = token_counters(cfg.backbone)
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "samples"):
        records = folder_records(datamodule, cfg.samples)
    else:  # synthetic data: the sample's caption strings are all there is
        datamodule.setup("fit")
        dataset = datamodule.train_dataloader().dataset
        records = [(str(i), {"captions": dataset[i]["captions"]}, dataset[i]["captions"]) for i in range(cfg.samples)]
    inspect(records, pipeline, counters, cfg.seed, cfg.variants)


if __name__ == "__main__":
    main()
