"""The real CLIP tokenizers shipped for SDXL (`clip_l`, `clip_g`) encode exactly as OpenAI's/open_clip's BPE of
the registry's merges file, are rebuilt byte for byte by scripts/build_clip_tokenizer.py, and are what a real
SDXL single file gets when no tokenizer is named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from illustrious.backbones.text_encoders import TOKENIZERS_DIR, load_tokenizer

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")  # dev dependency

ROOT = Path(__file__).resolve().parents[2]
LONG = ("masterpiece, best quality, very aesthetic, absurdres, 1girl, solo, long hair, looking at viewer, smile, "
        "open mouth, blue eyes, brown hair, shirt, long sleeves, holding, school uniform, upper body, outdoors, sky, "
        "day, cloud, cherry blossoms, petals, wind, hair ornament, hairclip, ribbon, neck ribbon, pleated skirt, "
        "thighhighs, zettai ryouiki, building, city, street, power lines, lens flare, depth of field, "
        "A girl stands on a quiet street at dawn while the first tram of the day passes behind her; "
        "her scarf catches the wind and the light turns the wet asphalt gold. ") * 3
PROMPTS = [
    "a photo of a cat",
    "",
    "   spaces\tand\nnewlines   between   words  ",
    "(masterpiece:1.2), ((best quality)), [blurry:0.8], {{1girl}}, <lora:style_v2:0.7>, BREAK, embedding:neg",
    "score_9, score_8_up, rating:safe, hatsune_miku_(vocaloid), :d, ^_^, >_<, o_o, 2girls, 1990s_(style)",
    "Café naïve résumé ÄÖÜ ß Øresund Ångström",
    "日本語のテキスト、初音ミク。漢字かな交じり文 한국어 中文 ภาษาไทย Русский текст العربية",
    "emoji 🎨✨🌸👩‍🎨 🇯🇵 and symbols ★☆♪ ©®™ ±×÷ ½",
    "don't I'll we've they're she's it'd you'RE",
    "numbers 1234567890 3.14159 1,000,000 #ff00aa 16:9 1920x1080",
    "UPPER lower MiXeD CamelCaseWords snake_case kebab-case dot.separated",
    LONG,
]


def test_shipped_clip_l_encodes_like_open_clip():
    ours = load_tokenizer("clip_l")
    reference = open_clip_tokenizer.SimpleTokenizer()
    for prompt in PROMPTS:
        assert ours(prompt, add_special_tokens=False).input_ids == reference.encode(prompt), prompt
    assert len(ours(LONG, add_special_tokens=False).input_ids) > 3 * 75  # long text: several chunks' worth
    # With BOS/EOS and padding to 77: open_clip's ids for bigG (pads with 0 = "!", SDXL's tokenizer_2).
    g = load_tokenizer("clip_g")
    for prompt in PROMPTS:
        ids = g(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        expected = reference([prompt])[0].tolist()
        if len(reference.encode(prompt)) > 75:  # open_clip keeps EOS as the last of 77 when it truncates
            assert ids[:76] == expected[:76] and expected[76] == ids[76] == reference.eot_token_id
        else:
            assert ids == expected, prompt


def test_only_the_text_cleaning_differs_from_open_clip():
    """open_clip cleans text with ftfy and html.unescape first; transformers' CLIPTokenizer, and so diffusers'
    SDXL pipelines, do not. On cleaned text the two agree."""
    ours = load_tokenizer("clip_l")
    reference = open_clip_tokenizer.SimpleTokenizer()
    for prompt in ["“curly quotes” and ‘single’", "fish &amp; chips &lt;3", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "ligatures ﬁ ﬂ", "全角，句読点"]:
        cleaned = open_clip_tokenizer.basic_clean(prompt)
        assert ours(cleaned, add_special_tokens=False).input_ids == reference.encode(prompt)


def test_sdxl_tokenizer_settings():
    """SDXL's tokenizer/ (CLIP ViT-L/14's, pads with EOS) and tokenizer_2/ (same vocabulary, pad "!" = id 0)."""
    lt, g = load_tokenizer("clip_l"), load_tokenizer("clip_g")
    assert len(lt) == len(g) == 49408 and lt.model_max_length == g.model_max_length == 77
    assert (lt.bos_token_id, lt.eos_token_id, lt.pad_token_id) == (49406, 49407, 49407)
    assert (g.bos_token_id, g.eos_token_id, g.pad_token_id, g.pad_token) == (49406, 49407, 0, "!")
    assert lt("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # transformers' docs


def test_build_script_reproduces_the_shipped_files(tmp_path):
    spec = importlib.util.spec_from_file_location("build_clip_tokenizer", ROOT / "scripts" / "build_clip_tokenizer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    vocab, merges = script.build(script.default_source())
    shipped = TOKENIZERS_DIR / "clip_l"
    assert json.loads((shipped / "vocab.json").read_text(encoding="utf-8")) == vocab
    assert (shipped / "merges.txt").read_text(encoding="utf-8") == "#version: 0.2\n" + "\n".join(merges) + "\n"
    assert script.bytes_to_unicode() == open_clip_tokenizer.bytes_to_unicode()


def test_sdxl_single_file_without_tokenizers_uses_the_shipped_ones(tmp_path):
    """An SDXL single file names no tokenizer: with neither backbone.tokenizer_* nor a config folder that has
    one, the real SDXL tokenizers are used (here with tiny widths at CLIP's real vocabulary size)."""
    from illustrious.backbones.autoencoders import LatentAutoencoder
    from illustrious.backbones.sdxl import SDXLBackbone
    from illustrious.errors import ConfigError
    from illustrious.weights.writing import write_safetensors

    torch.manual_seed(0)
    vae = LatentAutoencoder.from_architecture("sdxl_vae", sample=False, block_out_channels=[8, 8], layers_per_block=1,
                                              down_block_types=["DownEncoderBlock2D"] * 2, norm_num_groups=4,
                                              up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    unet = dict(sample_size=16, block_out_channels=[32, 64], layers_per_block=1, transformer_layers_per_block=[1, 1],
                attention_head_dim=[2, 4], norm_num_groups=16, addition_time_embed_dim=8,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"])
    original = SDXLBackbone.from_config(vae, "clip_l", "clip_g", unet=unet, text_encoder_1=text, text_encoder_2=text)
    config = tmp_path / "config"
    original.save_pretrained(config)
    for sub in ("tokenizer", "tokenizer_2"):
        for f in (config / sub).iterdir():
            f.unlink()
        (config / sub).rmdir()
    path = tmp_path / "model.safetensors"
    write_safetensors(original.original_state_dict(), path)

    loaded = SDXLBackbone.from_pretrained(str(path), config=str(config))
    assert loaded.text_encoders["clip_g"].tokenizer.pad_token_id == 0
    prompts = ["(masterpiece:1.2), 1girl, café", ""]
    with torch.no_grad():
        a, b = original.encode_text(prompts), loaded.encode_text(prompts)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)

    with pytest.raises(ConfigError, match="tokenizer_1 has 49408 tokens"):  # a tokenizer too big for the encoder
        small = tmp_path / "small"
        SDXLBackbone.from_config(vae, "clip_tiny", "clip_tiny", unet=unet, text_encoder_1=text,
                                 text_encoder_2=text).save_pretrained(small)
        SDXLBackbone.from_pretrained(str(path), config=str(small), tokenizer_1="clip_l")


def test_lumina_single_file_without_tokenizer_names_the_folder_to_pass(tmp_path):
    """Gemma-2's tokenizer is not shipped (no package registry carries it): the message says what to set."""
    from illustrious.backbones.lumina import LuminaBackbone
    from illustrious.errors import ConfigError
    from illustrious.weights.writing import write_safetensors

    path = tmp_path / "illustrious-lumina.safetensors"
    write_safetensors({"cap_embedder.0.weight": torch.ones(2)}, path)
    with pytest.raises(ConfigError, match=r"backbone\.tokenizer=<folder>.*Lumina-Image-2\.0/tokenizer.*backbone\.base="):
        LuminaBackbone.from_pretrained(str(path))
