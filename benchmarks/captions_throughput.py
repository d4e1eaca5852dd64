"""Caption pipeline throughput on one core, and the cost of chunked (long-prompt) SDXL text encoding.

1. captions/s of `captions=illustrious` and `captions=bigasp` on 40-tag Danbooru-like records (character,
   copyright, artist, 1girl/solo and 36 general tags, rating, score and year tags, a written caption),
   one process, CPU time (so a loaded machine inflates it less than wall time). Measured twice: the draw
   alone, and building the record from raw tags (what a data loader does per sample) plus the draw.
2. SDXL text encoding, one thread: CLIP-L-size and OpenCLIP-bigG-size towers (random weights, the shipped
   architecture configs) on a batch of prompts of 1, 2 and 3 chunks (75, 150, 225 tokens), and the same
   3-chunk prompts truncated to one chunk, as today's SDXL trainers do.

    uv run python benchmarks/captions_throughput.py [--draws 50000] [--batch 4] [--no-bigg]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from benchmarks.common import compose, machine, median

CHARACTERS = ["hatsune_miku", "kagamine_rin", "hakurei_reimu", "kirisame_marisa"]
GENERAL = [f"general_tag_{i}" for i in range(500)]


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"general": ["1girl", "solo", *rng.sample(GENERAL, 36)], "character": [rng.choice(CHARACTERS)],
             "copyright": ["vocaloid"], "artist": [f"artist_{rng.randrange(100)}"]} for _ in range(n)]


def caption_rate(pipe, raw: list[dict], draws: int, with_record: bool) -> float:
    from illustrious.data.captions import CaptionKey, caption_source

    prepared = [caption_source(t, rating="general", caption="A girl with long hair singing on a stage.",
                               score_tag="best quality", year_tag="newest") for t in raw]
    start = time.process_time()
    for i in range(draws):
        j = i % len(raw)
        source = (caption_source(raw[j], rating="general", caption="A girl with long hair singing on a stage.",
                                 score_tag="best quality", year_tag="newest") if with_record else prepared[j])
        pipe(source, CaptionKey(0, 0, i))
    return draws / (time.process_time() - start)


def pipelines():
    """`captions=illustrious` and `captions=bigasp` as a run composes and instantiates them."""
    import tempfile

    from illustrious.config import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        return {name: instantiate(compose([f"captions={name}"], tmp).captions) for name in ("illustrious", "bigasp")}


def encoding_times(batch: int, rounds: int, with_bigg: bool) -> dict:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from illustrious.backbones.architectures import architecture_config
    from illustrious.backbones.text_encoders import CLIPPromptEncoder, load_tokenizer

    tok = load_tokenizer("clip_tiny")  # 77 positions; word-level prompts of known length below
    words = [w for w in tok.get_vocab() if w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha()][:300]
    prompts = {n: [" ".join(w[:-4] for w in random.Random(b).sample(words, 75 * n)) for b in range(batch)]
               for n in (1, 2, 3)}
    towers = [("clip_l", "sdxl_text_encoder")] + ([("clip_g", "sdxl_text_encoder_2")] if with_bigg else [])
    results = {}
    for name, arch in towers:
        config = {**architecture_config(arch), "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                  "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        model = CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval()
        # the four variants are timed in turn within each round, so machine noise hits them alike (ratios hold)
        variants = {}
        for chunks_allowed, n in ((3, 1), (3, 2), (3, 3), (1, 3)):
            label = f"{n} chunk{'s' if n > 1 else ''}" if chunks_allowed > 1 else f"{n} chunks truncated to 1"
            variants[label] = (CLIPPromptEncoder(tok, model, max_chunks=chunks_allowed), prompts[n])
        times = {label: [] for label in variants}
        shapes = {}
        with torch.no_grad():
            for round_ in range(rounds + 1):
                for label, (enc, batch_prompts) in variants.items():
                    start = time.perf_counter()
                    states, _, _ = enc(batch_prompts)
                    if round_:  # round 0 warms up
                        times[label].append(time.perf_counter() - start)
                    shapes[label] = tuple(states.shape)
        for label in variants:
            results[(name, label)] = (median(times[label]), shapes[label])
        del model
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-bigg", action="store_true")
    parser.add_argument("--caption-rounds", type=int, default=5, help="caption rates are the median of this many")
    parser.add_argument("--no-encoding", action="store_true", help="captions/s only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    raw = records(1000)
    for name, pipe in pipelines().items():
        for with_record in (False, True):
            rates = [caption_rate(pipe, raw, args.draws, with_record) for _ in range(args.caption_rounds)]
            what = "record + draw" if with_record else "draw"
            print(f"captions={name:<12} {what:<14} {median(rates):>9,.0f} captions/s (one core, CPU time; median of "
                  f"{len(rates)}, range {min(rates):,.0f}-{max(rates):,.0f})")
    if args.no_encoding:
        return
    timed = encoding_times(args.batch, args.rounds, not args.no_bigg)
    for (tower, label), (seconds, shape) in timed.items():
        ratio = seconds / timed[(tower, "1 chunk")][0]
        print(f"{tower:<7} batch {args.batch}, {label:<24} {seconds * 1000:8.1f} ms  x{ratio:.2f} of one chunk  "
              f"states {shape}")


if __name__ == "__main__":
    main()
