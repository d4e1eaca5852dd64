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
    with pytest.raises(ConfigError, match="variants: cache has 4, this run has 2"):
        cache = TextEmbeddingCache(tmp_path, variants=2, seed=0)
        (tmp_path / "cache.json").write_text('{"variants": 4, "seed": 0, "samples": 6}')
        cache.check_built(6)


# -- connected to training: data.text_cache ----------------------------------------------------------------


class FakeStrategy:
    root_device = torch.device("cpu")

    def barrier(self, name=None):
        pass


class FakeTrainer:
    """What a data module's setup and loader read from Lightning's trainer."""

    global_rank, world_size, is_global_zero = 0, 1, True

    def __init__(self, module):
        self.lightning_module, self.strategy = module, FakeStrategy()


def module_for(backbone, text_encoder_lr=0.0):
    import functools

    from illustrious.module import DiffusionModule
    from illustrious.objectives import FlowObjective

    return DiffusionModule(backbone, FlowObjective(), functools.partial(torch.optim.AdamW), lr=1e-3,
                           text_encoder_lr=text_encoder_lr)


def shapes_with_cache(folder, module, captions=None, **kw):
    from illustrious.data.sources.shapes_datamodule import ShapesDataModule

    dm = ShapesDataModule(width=16, height=16, length=12, seed=3, batch_size=4,
                          captions=captions or PlainCaptions(styles={"tags": 1, "sentence": 1}, dropout=0.3),
                          text_cache=str(folder), text_cache_variants=kw.pop("variants", 2), **kw)
    dm.trainer = FakeTrainer(module)
    return dm


@pytest.mark.parametrize("make", [sdxl, lambda: sdxl(True), lumina], ids=["sdxl", "sdxl_masked", "lumina"])
def test_cached_batch_trains_to_the_same_loss_as_encoding_its_captions(make, tmp_path):
    """The same batch, once with the cache's `conditioning` and once encoding its `captions`: the same loss."""
    module = module_for(make())
    dm = shapes_with_cache(tmp_path / "texts", module)
    dm.setup("fit")
    assert (tmp_path / "texts" / "cache.json").is_file()  # built on first use
    batches = iter(dm.train_dataloader())
    for _ in range(3):
        batch = next(batches)
        cached = batch["conditioning"]
        # the captions the batch names are the ones its entries encode
        want = module.backbone.encode_text(batch["captions"])
        if want.mask is None:
            assert cached.tokens.shape == want.tokens.shape
        else:  # masked entries end at their last real token; the real positions agree
            n = cached.mask.shape[1]
            assert torch.equal(cached.mask, want.mask[:, :n]) and not want.mask[:, n:].any()
        torch.manual_seed(11)
        with_cache = module.training_step(batch, 0)
        torch.manual_seed(11)
        encoded = module.training_step({k: v for k, v in batch.items() if k != "conditioning"}, 0)
        assert torch.equal(with_cache, encoded), (with_cache, encoded)


def test_cache_refused_while_a_text_encoder_trains(tmp_path):
    from illustrious.weights.lora import LoraSettings, setup_lora

    for lr in (None, 1e-4):  # None: the text encoders train at the denoiser's rate
        dm = shapes_with_cache(tmp_path / "texts", module_for(sdxl(), text_encoder_lr=lr))
        with pytest.raises(ConfigError, match="text_encoder_1 trains"):
            dm.setup("fit")
    backbone = sdxl()
    setup_lora(backbone, LoraSettings(method="lora", rank=2, text_encoders=["text_encoder_2"], save=[]))
    dm = shapes_with_cache(tmp_path / "texts", module_for(backbone))
    with pytest.raises(ConfigError, match="text_encoder_2 has LoRA adapters"):
        dm.setup("fit")
    assert not (tmp_path / "texts").exists()  # refused before any work
    with pytest.raises(RuntimeError, match="precomputed"):  # and the module's own guard
        module = module_for(sdxl(), text_encoder_lr=1e-4)
        module.training_step({"pixels": torch.zeros(1, 3, 16, 16), "captions": [""],
                              "conditioning": module.backbone.encode_text([""])}, 0)


def test_cache_from_other_text_encoders_or_captions_is_refused(tmp_path):
    folder = tmp_path / "texts"
    shapes_with_cache(folder, module_for(sdxl())).setup("fit")
    shapes_with_cache(folder, module_for(sdxl())).setup("fit")  # the same settings: reused as is

    def refused(module, match, **kw):
        with pytest.raises(ConfigError, match=match):
            shapes_with_cache(folder, module, **kw).setup("fit")

    other_weights = sdxl()
    with torch.no_grad():
        other_weights.text_encoders["clip_g"].model.get_input_embeddings().weight.add_(0.01)
    refused(module_for(other_weights), "text_encoders: cache has")
    fewer_chunks = sdxl()
    for enc in fewer_chunks.text_encoders.values():
        enc.max_chunks = 2
    refused(module_for(fewer_chunks), "max_chunks")
    shorter = SDXLBackbone.from_config(PixelAutoencoder(factor=2), "clip_tiny", "clip_tiny", unet=UNET,
                                       text_encoder_1=TE, text_encoder_2=TE, tokenizer_max_length=10, max_chunks=3)
    refused(module_for(shorter), "model_max_length")
    refused(module_for(sdxl(True)), "mask_padding")
    refused(module_for(sdxl()), "captions: cache has", captions=PlainCaptions(styles={"tags": 1}, dropout=0.3))
    refused(module_for(sdxl()), "variants: cache has 2, this run has 3", variants=3)
    # Lumina: the system prompt is part of what was encoded
    lumina_dir = tmp_path / "lumina"
    shapes_with_cache(lumina_dir, module_for(lumina())).setup("fit")
    other_prompt = lumina()
    other_prompt.text_encoders["gemma"].system_prompt = "Draw it."
    with pytest.raises(ConfigError, match="system_prompt"):
        shapes_with_cache(lumina_dir, module_for(other_prompt)).setup("fit")


def test_a_replacement_sample_uses_its_own_cached_entry():
    """A folder sample that fails to load is replaced by another of its bucket: without a cache it draws as the
    sample it stands for; with one, the batch takes the replacement's own entry (its caption, its embedding)."""
    import numpy as np

    from illustrious.data.captions.rng import EpochBatch
    from illustrious.data.images.decode import ImageError
    from illustrious.data.loading.batching import Collate
    from illustrious.data.sources.folder_dataset import BucketBatches

    class Samples:
        bucket_sizes = np.array([[8, 8]] * 4)

        def load(self, index, rng=None):
            if index == 1:
                raise ImageError("decode_failed", "truncated")
            return {"pixels": np.zeros((3, 8, 8), np.uint8), "captions": f"sample {index}"}

        def row(self, index):
            return {"path": f"{index}.png"}

    class Entries:  # a stand-in cache: each entry says which (index, variant) it is
        variants = 2

        def variant_entry(self, index, variant):
            return {"tokens": torch.full((1, 1), float(10 * index + variant))}

        def collate(self, entries):
            return torch.cat([e["tokens"] for e in entries])

    loaded = BucketBatches(Samples(), {0: np.arange(4)}, np.zeros(4, int), seed=0)[EpochBatch([0, 1, 2], epoch=3)]
    assert loaded.indices == [0, 1, 2] and loaded.loaded[0] == 0 and loaded.loaded[1] not in (1,)
    plain = Collate(PlainCaptions(dropout=0.0))(loaded)
    assert plain["captions"][1] == f"sample {loaded.loaded[1]}" and "conditioning" not in plain
    cached = Collate(PlainCaptions(dropout=0.0), text_cache=Entries())(loaded)
    keys = [variant_of(CaptionKey(0, 3, i), 2) for i in loaded.loaded]
    assert cached["conditioning"].flatten().tolist() == [10 * i + k for i, k in zip(loaded.loaded, keys, strict=True)]


def test_cached_grouped_batches_resume_exactly(tmp_path):
    """Text cache + chunk grouping on shapes with 10-token chunks (captions need 1 to 3): batches are mostly of
    one chunk count, and a loader resumed from the sampler's state gives the same batches and embeddings."""
    from itertools import islice

    def backbone():
        torch.manual_seed(0)
        return SDXLBackbone.from_config(PixelAutoencoder(factor=2), "clip_tiny", "clip_tiny", unet=UNET,
                                        text_encoder_1=TE, text_encoder_2=TE, tokenizer_max_length=12, max_chunks=3)

    def loader(state=None):
        module = module_for(backbone())
        dm = shapes_with_cache(tmp_path / "texts", module, group_by_chunks=True)
        dm.dataset.length = 32
        dm.setup("fit")
        if state:
            dm.load_state_dict(state)
        return dm, [(b["captions"], b["conditioning"].tokens) for b in islice(dm.train_dataloader(), 5)]

    dm, straight = loader()
    counts = [{t.shape[1] // 12} for _, t in straight]
    chunks = [{len(module_for(backbone()).backbone.text_encoders["clip_l"].chunks([c]).rows) for c in caps}
              for caps, _ in straight]
    assert sum(len(c) == 1 for c in chunks) >= 3 and len(set().union(*chunks)) > 1, chunks  # grouped, and varied
    assert all(len(c) == 1 for c in counts)
    state = dm.sampler.state_dict(batches_done=2)
    _, resumed = loader(state)
    assert [c for c, _ in resumed[:3]] == [c for c, _ in straight[2:5]]
    for (_, a), (_, b) in zip(resumed[:3], straight[2:5], strict=True):
        assert torch.equal(a, b)
