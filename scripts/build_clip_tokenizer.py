"""Build the real CLIP tokenizer shipped in `illustrious/backbones/tokenizers/clip_l/` (run once; output committed).

SDXL's two tokenizers are CLIP ViT-L/14's byte-level BPE (49408 tokens); `tokenizer_2` differs only in its pad
token ("!", id 0, as OpenCLIP pads), which `illustrious.backbones.text_encoders` applies when loading `clip_g`.
The vocabulary comes from a package registry, not the Hub: open_clip_torch's wheel ships OpenAI's merges file
`bpe_simple_vocab_16e6.txt.gz`. This writes what transformers' CLIPTokenizer reads (vocab.json, merges.txt,
tokenizer_config.json), derived the way OpenAI's/open_clip's `SimpleTokenizer` derives its vocabulary:

- merges: lines 1 .. 48894 of the file (line 0 is a version header; 49152 - 256 bytes - 2 specials);
- vocab: the 256 byte symbols in `bytes_to_unicode` order, the same with "</w>" (end of word), each merge's
  concatenation in merge order, then <|startoftext|> (49406) and <|endoftext|> (49407).

    uv run python scripts/build_clip_tokenizer.py [path/to/bpe_simple_vocab_16e6.txt.gz]
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "illustrious" / "backbones" / "tokenizers" / "clip_l"
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of the 256 bytes to printable characters, in CLIP's order: printable bytes
    (mapped to themselves) first, then the others (mapped to chr(256 + n))."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def default_source() -> Path:
    import open_clip  # dev dependency: only its data file is used

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def build(source: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(source).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(m.replace(" ", "") for m in merges), BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or any(len(m.split(" ")) != 2 for m in merges):
        raise SystemExit(f"{source} is not CLIP's merges file: {len(vocab)} distinct tokens (expected {VOCAB_SIZE}).")
    return vocab, merges


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else default_source()
    vocab, merges = build(source)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # openai/clip-vit-large-patch14's settings, which SDXL's `tokenizer/` copies (tokenizer_2/ swaps pad for "!").
    config = {"tokenizer_class": "CLIPTokenizer", "bos_token": BOS, "eos_token": EOS, "unk_token": EOS,
              "pad_token": EOS, "model_max_length": 77, "do_lower_case": True, "errors": "replace",
              "illustrious_source": f"{source.name} sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}"}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {OUT}")


if __name__ == "__main__":
    main()
