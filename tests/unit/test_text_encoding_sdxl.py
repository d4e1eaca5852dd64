"""SDXL long prompts: chunk ids on a hand-worked example (sd-scripts' rule), states and pooled against
diffusers' StableDiffusionXLPipeline.encode_prompt (which truncates to one chunk), and the padding mask.

The tokenizer is shortened to 12 positions, so a chunk holds 10 tokens instead of 75; the rules are the same.
"""

import pytest
import torch

from illustrious.backbones import PixelAutoencoder, SDXLBackbone
from illustrious.backbones.prompt_chunks import chunk_count

WORDS = ("red blue green circle square triangle left right top bottom black white background small large hair "
         "eyes smile girl solo dress").split()  # each one token in clip_tiny
TE1 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
TE2 = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
UNET = dict(sample_size=8, block_out_channels=[16, 32], layers_per_block=1, transformer_layers_per_block=[1, 1],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            attention_head_dim=[2, 4], norm_num_groups=8, addition_time_embed_dim=4)


def build(max_chunks=3, mask_padding=False):
    torch.manual_seed(0)
    backbone = SDXLBackbone.from_config(PixelAutoencoder(factor=2), "clip_tiny", "clip_tiny", unet=UNET,
                                        text_encoder_1=TE1, text_encoder_2=TE2, tokenizer_max_length=12,
                                        max_chunks=max_chunks, mask_padding=mask_padding)
    return backbone.eval()


@pytest.fixture(scope="module")
def backbone():
    return build()


LONG = " ".join(WORDS + ["red", "blue"])  # 23 tokens: chunks of 10 + 10 + 3
SHORT = "red circle left"


def ids(tokenizer, text):
    marks = {"BOS": tokenizer.bos_token_id, "EOS": tokenizer.eos_token_id, "PAD": tokenizer.pad_token_id}
    return [marks[w] if w in marks else tokenizer.convert_tokens_to_ids(w + "</w>") for w in text.split()]


def test_chunk_ids_hand_worked(backbone):
    enc = backbone.text_encoders["clip_l"]
    tok = enc.tokenizer
    chunked = enc.chunks([LONG, SHORT])
    # Worked by hand with sd-scripts' rule (strategy_base._get_input_ids): every chunk is BOS, the next 10
    # tokens, EOS; a short one is followed by PAD; a slot a prompt does not fill is BOS EOS PAD...
    expected = [
        "BOS red blue green circle square triangle left right top bottom EOS",
        "BOS black white background small large hair eyes smile girl solo EOS",
        "BOS dress red blue EOS PAD PAD PAD PAD PAD PAD PAD",
        "BOS red circle left EOS PAD PAD PAD PAD PAD PAD PAD",
        "BOS EOS PAD PAD PAD PAD PAD PAD PAD PAD PAD PAD",
    ]
    assert chunked.rows.tolist() == [ids(tok, e) for e in expected]
    assert chunked.counts == [3, 1]
    assert chunked.layout.tolist() == [[0, 1, 2], [3, 4, 4]]
    # BOS..EOS of real chunks only
    assert chunked.mask[0].tolist() == [True] * 24 + [True] * 5 + [False] * 7
    assert chunked.mask[1].tolist() == [True] * 5 + [False] * 31
    # at most max_chunks: the rest is truncated
    assert enc.chunks([LONG + " " + LONG]).counts == [3]
    assert [chunk_count(n, 75, 3) for n in (0, 1, 75, 76, 150, 151, 400)] == [1, 1, 1, 2, 2, 3, 3]


@torch.no_grad()
def test_states_positions_and_pooled_source(backbone):
    enc = backbone.text_encoders["clip_g"]
    states, pooled, _ = enc([LONG])
    rows = enc.chunks([LONG]).rows
    assert states.shape == (1, 36, enc.hidden_size)
    for k in range(3):  # each chunk encoded on its own, its 12 positions kept in place
        alone = enc.model(rows[k:k + 1], output_hidden_states=True)
        torch.testing.assert_close(states[:, 12 * k:12 * (k + 1)], alone.hidden_states[-2])
        if k == 0:
            torch.testing.assert_close(pooled, alone.text_embeds)  # pooled from the first chunk


@torch.no_grad()
def test_first_chunk_equals_diffusers_encode_prompt(backbone):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline

    te1, te2 = backbone.text_encoders["clip_l"], backbone.text_encoders["clip_g"]
    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(block_out_channels=(8,), norm_num_groups=8),
                                     text_encoder=te1.model, text_encoder_2=te2.model, tokenizer=te1.tokenizer,
                                     tokenizer_2=te2.tokenizer, unet=backbone.denoiser, scheduler=EulerDiscreteScheduler())
    ref, _, ref_pooled, _ = pipe.encode_prompt([LONG, SHORT], device="cpu", do_classifier_free_guidance=False)
    ours = backbone.encode_text([LONG, SHORT])
    assert ours.tokens.shape[1] == 36 and ours.mask is None
    torch.testing.assert_close(ours.tokens[:, :12], ref)  # diffusers truncates to the first chunk
    torch.testing.assert_close(ours.pooled, ref_pooled)
    short = backbone.encode_text([SHORT])  # one chunk: exactly diffusers'
    torch.testing.assert_close(short.tokens, ref[1:])
    torch.testing.assert_close(short.pooled, ref_pooled[1:])


@torch.no_grad()
def test_one_chunk_truncates_like_before():
    backbone = build(max_chunks=1)
    cond = backbone.encode_text([LONG, SHORT])
    assert cond.tokens.shape[1] == 12


@torch.no_grad()
def test_masked_cross_attention_ignores_padding():
    """With the mask, a short prompt's prediction does not depend on what it is batched with."""
    x, t = torch.randn(1, 12, 8, 8), torch.tensor([0.5])
    for mask_padding in (True, False):
        backbone = build(mask_padding=mask_padding)
        alone = backbone(x, t, backbone.encode_text([SHORT]))
        batched = backbone(x.repeat(2, 1, 1, 1), t.repeat(2), backbone.encode_text([SHORT, LONG]))[:1]
        if mask_padding:
            torch.testing.assert_close(alone, batched, rtol=1e-4, atol=1e-5)
        else:  # SDXL's own behaviour: the filler chunks and pads are attended
            assert not torch.allclose(alone, batched, rtol=1e-4, atol=1e-5)


class RecordingModel:
    """Stands in for the backbone under CFG: records the batched conditioning, offers its padding chunk."""

    def __init__(self, backbone):
        self.backbone, self.seen = backbone, []

    def padding_chunk(self):
        return self.backbone.padding_chunk()

    def __call__(self, x, t, cond, extras):
        self.seen.append(cond)
        return torch.zeros_like(x)


def tower_states(encoder, row_ids):
    """Penultimate hidden states of one hand-built id row, straight through a CLIP tower."""
    return encoder.model(torch.tensor([row_ids]), output_hidden_states=True).hidden_states[-2][0]


@torch.no_grad()
@pytest.mark.parametrize("mask_padding", [False, True])
def test_cfg_pads_a_shorter_negative_with_empty_chunks(mask_padding):
    """A1111 pads a shorter negative prompt with the empty prompt's encoding (`pad_cond` with
    `cond_stage_model_empty_prompt`), not zeros; masked conditioning keeps zeros under a False mask."""
    from illustrious.objectives import FlowObjective
    from illustrious.sampling.guidance import cfg_denoiser

    backbone = build(mask_padding=mask_padding)
    cond, uncond = backbone.encode_text([LONG]), backbone.encode_text(["red circle"])
    assert cond.tokens.shape[1] == 36 and uncond.tokens.shape[1] == 12  # 3 chunks against 1
    model = RecordingModel(backbone)
    denoise = cfg_denoiser(model, FlowObjective().to_x0, cond, uncond, 4.0)
    denoise(torch.randn(1, 4, 8, 8), torch.tensor(0.5))
    both = model.seen[0]
    assert torch.equal(both.tokens[0], cond.tokens[0])
    torch.testing.assert_close(both.tokens[1, :12], uncond.tokens[0], rtol=0, atol=0)
    if mask_padding:  # never attended: zeros, masked out
        assert torch.equal(both.tokens[1, 12:], torch.zeros(24, both.tokens.shape[2]))
        assert both.mask[1].tolist() == [True] * 4 + [False] * 32
        return
    # the reference, by hand: the empty chunk BOS EOS PAD... through each tower, side by side, twice
    tok = backbone.text_encoders["clip_l"].tokenizer
    empty_ids = ids(tok, "BOS EOS " + " ".join(["PAD"] * 10))
    empty = torch.cat([tower_states(backbone.text_encoders[k], empty_ids) for k in ("clip_l", "clip_g")], dim=-1)
    assert not torch.equal(empty, torch.zeros_like(empty))
    torch.testing.assert_close(both.tokens[1, 12:24], empty, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both.tokens[1, 24:], empty, rtol=1e-6, atol=1e-6)
    assert both.mask is None
    # and it is what encoding the two prompts together gives (prompt_chunks fills with the empty chunk)
    torch.testing.assert_close(both.tokens, backbone.encode_text([LONG, "red circle"]).tokens, rtol=1e-5, atol=1e-5)
