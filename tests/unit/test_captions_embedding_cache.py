"""Text-embedding caching with K augmented variants: exact against encoding, drawn per epoch, K=1 refused."""

from collections import Counter

import pytest
import torch

from illustrious.backbones import LuminaBackbone, PixelAutoencoder, SDXLBackbone
from illustrious.data.captions import CaptionKey, PlainCaptions, TagCaptions, caption_source
from illustrious.data.captions.embedding_cache import TextEmbeddingCache, check_variants, variant_of
from illustrious.errors import ConfigError

TE = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=8)
UNET = dict(sample_size=8, block_out_channels=[16, 32], layers_per_block=1, transformer_layers_per_block=[1, 1],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            attention_head_dim=[2, 4], norm_num_groups=8, addition_time_embed_dim=4)
GEMMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             head_dim=16, query_pre_attn_scalar=16)
DIT = dict(sample_size=8, hidden_size=48, num_layers=1, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1,
           multiple_of=16, axes_dim_rope=[8, 8, 8], axes_lens=[300, 32, 32])


def sdxl(mask_padding=False):
    torch.manual_seed(0)
    return SDXLBackbone.from_config(PixelAutoencoder(factor=2), "clip_tiny", "clip_tiny", unet=UNET, text_encoder_1=TE,
                                    text_encoder_2=TE, tokenizer_max_length=12, max_chunks=3,
                                    mask_padding=mask_padding).eval()


def lumina():
    torch.manual_seed(0)
    return LuminaBackbone.from_config(PixelAutoencoder(factor=2), "gemma_tiny", transformer=DIT, text_encoder=GEMMA).eval()


SOURCES = [caption_source({"general": ["1girl", "solo"] + [f"tag_{j}" for j in range(3 + 4 * i)]}, rating="general")
           for i in range(6)]


@pytest.mark.parametrize("make", [sdxl, lambda: sdxl(True), lumina], ids=["sdxl", "sdxl_masked", "lumina"])
@torch.no_grad()
def test_cached_batches_equal_encoding_the_drawn_captions(make, tmp_path):
    backbone = make()
    pipe = TagCaptions(register_prob=0.3)
    cache = TextEmbeddingCache(tmp_path, variants=3, seed=5)
    cache.build(backbone, SOURCES, pipe, batch_size=4)
    cache.check_built(len(SOURCES))
    for epoch in (0, 7):
        batch = [0, 3, 5, 1]
        got = cache.collate([cache.entry(i, epoch) for i in batch])
        prompts = [pipe(SOURCES[i], CaptionKey(5, variant_of(CaptionKey(5, epoch, i), 3), i)) for i in batch]
        want = backbone.encode_text(prompts)
        assert got.tokens.shape == want.tokens.shape
        if want.mask is None:  # unmasked SDXL: padded with empty chunks, exactly as a joint encoding
            torch.testing.assert_close(got.tokens, want.tokens, rtol=1e-5, atol=1e-5)
        else:  # masked: the same real positions (what padding holds is never attended)
            assert torch.equal(got.mask, want.mask)
            torch.testing.assert_close(got.tokens[got.mask], want.tokens[want.mask], rtol=1e-5, atol=1e-5)
        if want.pooled is not None:
            torch.testing.assert_close(got.pooled, want.pooled, rtol=1e-5, atol=1e-5)


def test_variants_drawn_uniformly_per_epoch():
    draws = Counter(variant_of(CaptionKey(0, e, i), 4) for e in range(50) for i in range(40))
    assert set(draws) == {0, 1, 2, 3} and min(draws.values()) > 400
    assert variant_of(CaptionKey(0, 3, 9), 4) == variant_of(CaptionKey(0, 3, 9), 4)


def test_one_variant_with_augmentation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no augmentation"):
        check_variants(1, TagCaptions().augments)
    check_variants(1, PlainCaptions(styles={"tags": 1.0}, dropout=0.0).augments)  # a fixed caption may be cached once
    check_variants(4, True)
    with pytest.raises(ConfigError, match="rebuild"):
        cache = TextEmbeddingCache(tmp_path, variants=2, seed=0)
        (tmp_path / "cache.json").write_text('{"variants": 4, "seed": 0, "samples": 6}')
        cache.check_built(6)
