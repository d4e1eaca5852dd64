"""Build the tiny tokenizers shipped in `illustrious/backbones/tokenizers/` (run once; output is committed).

They use the real tokenizer classes (transformers' CLIPTokenizer and GemmaTokenizer) with small BPE
vocabularies trained on the shapes captions, Lumina's system prompt and common English and Danbooru
words. Any text still tokenizes: CLIP's vocabulary holds every byte (and byte + "</w>"), Gemma's
falls back to bytes.

    uv run python scripts/build_tokenizers.py
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, GemmaTokenizer

from illustrious.backbones.text_encoders import LUMINA_SYSTEM_PROMPT
from illustrious.data.sources.shapes import ShapesDataset, vocabulary

OUT = Path(__file__).resolve().parents[1] / "illustrious" / "backbones" / "tokenizers"

ENGLISH = """the of and to in is was for on that with as by at from it an be this are or which his not but
had have has one were they their all been there more when will would can who also into other after its
time first new two some only most over such then these them may many any out up about what than use used
like just made so each how well while where through between both each under very make good high long
small large big little great old young man woman girl boy child people hair eyes face hand hands dress
shirt skirt hat flower flowers tree trees sky cloud clouds sun moon star stars night day water sea river
city street house room window light dark shadow colour color colors red green blue yellow purple pink
orange brown grey gray black white silver gold smile smiling looking viewer standing sitting holding
open closed mouth long short hair blonde full body upper portrait landscape outdoors indoors simple
detailed masterpiece best quality amazing highly aesthetic absurdres newest year score rating general
sensitive questionable explicit safe solo 1girl 1boy 2girls multiple girls animal cat dog bird looking
at the viewer wearing background image picture illustration anime art style painting drawing sketch
photo realistic artist character copyright series original meta tags caption describe showing shows
scene left right top bottom center middle corner front back side near far above below behind next
round square circle triangle rectangle shape shapes line lines pattern plain solid gradient bright dark"""

DANBOORU = """1girl 1boy solo long_hair short_hair looking_at_viewer smile open_mouth blush bangs blue_eyes
red_eyes brown_hair black_hair blonde_hair white_background simple_background shirt skirt dress
long_sleeves holding hair_ornament thighhighs gloves hat jewelry bow ribbon school_uniform upper_body
full_body standing sitting outdoors sky day night cloud masterpiece best_quality absurdres newest
very_aesthetic highres official_art""".replace("_", " ")


def corpus(n_captions: int = 4000) -> list[str]:
    shapes = ShapesDataset(length=n_captions, seed=12345)
    lines = []
    for i in range(n_captions):
        layout = shapes.layout(i)
        lines += [layout.tags(), layout.sentence()]
    lines += [LUMINA_SYSTEM_PROMPT + " <Prompt Start> "] * 50
    lines += [" ".join(vocabulary())] * 20
    words = (ENGLISH + " " + DANBOORU).split()
    rng = random.Random(0)
    lines += [" ".join(rng.choices(words, k=12)) for _ in range(3000)]
    lines += [", ".join(rng.choices(DANBOORU.split("\n"), k=4)) for _ in range(500)]
    return lines


def build_clip(lines: list[str], vocab_size: int) -> CLIPTokenizer:
    # Same normalizer / pre-tokenizer / BPE settings as transformers' CLIPTokenizer, so the merges fit it.
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(lines, trainer)
    learned = tok.get_vocab()
    # Like CLIP's own vocabulary: every byte alone and at a word's end, learned merges, specials last
    # (CLIP's pooled output takes the eos position as the argmax id).
    ordered = [*alphabet, *(c + "</w>" for c in alphabet)]
    ordered += sorted((t for t in learned if t not in set(ordered)), key=learned.get)
    vocab = {t: i for i, t in enumerate(ordered)}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = _merges(tok)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_gemma(lines: list[str], vocab_size: int) -> GemmaTokenizer:
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    vocab = tok.get_vocab()
    return GemmaTokenizer(vocab=vocab, merges=_merges(tok), model_max_length=256, add_bos_token=True, add_eos_token=False)


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    import json

    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]


def main() -> None:
    lines = corpus()
    for name, build, size in [("clip_tiny", build_clip, 1024), ("gemma_tiny", build_gemma, 1024)]:
        target = OUT / name
        shutil.rmtree(target, ignore_errors=True)
        tokenizer = build(lines, size)
        tokenizer.save_pretrained(target)
        print(f"{name}: {len(tokenizer)} tokens -> {target}")


if __name__ == "__main__":
    main()
