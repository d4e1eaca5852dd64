"""The GPU throughput benchmark's own code, run on the CPU with the tiny flavours before any device time is spent:
its table, its FLOP counting against a hand count, the largest-batch search and the memory fit."""

import json

import pytest
import torch
from torch import nn

from benchmarks import gpu_throughput
from benchmarks.throughput_parts import largest_batch, line_fit, memory_guess, training_step_flops
from illustrious.backbones.base import Conditioning
from illustrious.objectives import FlowObjective


class LinearAttention(nn.Module):
    """A stand-in backbone: one Linear over channels, then self-attention over the pixels (math kernel)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.proj, self.heads = nn.Linear(channels, channels, bias=False), heads

    def forward(self, x_t, t, cond, batch_extras=None):
        b, c, h, w = x_t.shape
        tokens = self.proj(x_t.flatten(2).transpose(1, 2))  # (B, N, C)
        q = tokens.view(b, h * w, self.heads, c // self.heads).transpose(1, 2)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            out = nn.functional.scaled_dot_product_attention(q, q, q)
        return out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)


def test_flops_of_one_training_step_match_a_hand_count():
    B, C, H, W, heads = 2, 8, 4, 4, 2
    N, d = H * W, C // heads
    backbone = LinearAttention(C, heads)
    batch = {"latents": torch.randn(B, C, H, W), "conditioning": Conditioning(tokens=torch.zeros(B, 1, 1))}
    linear = 2 * B * N * C * C  # one (B N x C) @ (C x C) product
    attention = 2 * (2 * B * heads * N * N * d)  # Q K^T and A V
    # backward: the Linear's weight gradient only (x_t needs none); attention: dA, dV, dS -> dQ, dK, one
    # product each, twice the forward
    expected = (linear + attention) + (linear + 2 * attention)
    assert training_step_flops(backbone, FlowObjective(), batch) == expected


def test_largest_batch_search_finds_the_boundary():
    def fits_up_to(limit, tried):
        return lambda b: tried.append(b) or b <= limit

    for limit in (1, 5, 37, 64, 200):
        tried = []
        assert largest_batch(fits_up_to(limit, tried), cap=256, guess=8) == (limit, limit + 1)
        assert len(tried) < 20
    assert largest_batch(lambda b: False, guess=8) == (0, 1)
    assert largest_batch(lambda b: True, cap=48, guess=8) == (48, None)
    lo, hi = largest_batch(lambda b: b <= 100, guess=90, growth=1.25, tolerance=0.05)
    assert lo <= 100 < hi and hi - lo <= 5


def test_memory_guess_from_a_straight_line():
    points = [(4, 30.0), (8, 40.0), (16, 60.0)]  # 20 GiB fixed + 2.5 GiB per sample
    assert line_fit(points) == pytest.approx((20.0, 2.5))
    assert memory_guess(points, capacity_gib=140.0, headroom=1.0) == 48
    # checkpointing: the same fixed part, 0.5 GiB per sample
    assert memory_guess([(8, 24.0)], capacity_gib=140.0, intercept=20.0, headroom=1.0) == 240
    assert memory_guess([(8, 40.0)], capacity_gib=140.0) is None


def test_tiny_sweep_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    rows = gpu_throughput.main(["--tiny", "--sections", "levers,checkpointing", "--levers", "2", "--steps", "1",
                                "--warmup", "1", "--out", str(out), "--table", str(tmp_path / "tiny.md")])
    table = (tmp_path / "tiny.md").read_text().splitlines()
    assert table[0] == "| " + " | ".join(gpu_throughput.COLUMNS) + " |"
    body = [line.split(" | ") for line in table[2:]]
    assert len(body) == len(rows) == 2 * (2 + len(gpu_throughput.CHECKPOINTING))
    assert {(r["model"], r["section"]) for r in rows} == {(m, s) for m in ("sdxl", "lumina")
                                                         for s in ("levers", "checkpointing")}
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu" and len(saved["rows"]) == len(rows)
    for row in rows:
        assert "error" not in row, row
        assert row["samples_per_s"] > 0 and row["step_ms"] > 0 and row["wait_ms"] >= 0 and row["loss_finite"]
        assert row["flops_per_sample"] > 0 and row["mfu"] is None  # no MFU against a GPU peak on the CPU
    # the ratios: each lever against the previous one, and against the reference
    second = rows[1]
    assert body[1][-2].strip() == f"{second['samples_per_s'] / rows[0]['samples_per_s']:.2f}"
    # FLOPs per sample do not depend on the levers, and a batch of 2 costs twice a batch of 1
    assert len({r["flops_per_sample"] for r in rows if r["model"] == "sdxl"}) == 1
    assert "| sdxl | 32 | 2 | levers | + flash attention |" in "\n".join(table)


@pytest.mark.skipif(not hasattr(__import__("illustrious.module").module.DiffusionModule, "conditioning"),
                    reason="DiffusionModule does not read batch['conditioning'] yet (captions-gaps adds it)")
def test_cached_batches_never_run_the_text_encoders(tmp_path):
    """The timed step reads `batch["conditioning"]` (precomputed embeddings), never encode_text."""
    rows = gpu_throughput.main(["--tiny", "--models", "lumina", "--sections", "levers", "--levers", "1",
                                "--steps", "1", "--warmup", "1"])
    assert rows[0]["text_encoder_calls"] == 0


@pytest.mark.parametrize(("model", "params"), [("sdxl", 2_567_463_684), ("lumina", 2_609_769_152)])
def test_real_size_models_come_from_the_shipped_architectures(model, params):
    """What the GPU run trains: the published denoisers (built on the meta device here: no memory, no time)."""
    bench = gpu_throughput.Bench(gpu_throughput.parse(["--models", model]))
    cfg = bench.config(model, ["backbone.attention=flash"], 8, 4)
    with torch.device("meta"):
        backbone = gpu_throughput.instantiate(cfg.backbone)
    assert sum(p.numel() for p in backbone.denoiser.parameters()) == params
    assert backbone.attention == "flash" and backbone.latent_channels == (4 if model == "sdxl" else 16)
    assert backbone.autoencoder.spatial_factor == 8
    batch = gpu_throughput.meta_batch(backbone, 2, bench.latent_hw(model, 1024), bench.tokens(model))
    assert batch["latents"].shape[-2:] == (128, 128)
    cond = batch["conditioning"]
    width = 2048 if model == "sdxl" else 2304  # CLIP-L + bigG states; Gemma-2-2B's hidden size
    assert cond.tokens.shape == (2, 77 if model == "sdxl" else 256, width)
    assert (cond.pooled is not None) == (model == "sdxl")


def test_device_script_is_valid_bash_and_brings_the_missing_packages():
    """benchmarks/gpu_run.sh runs once on a lent GPU: a syntax error there would cost the lease. (Its whole dry path,
    `DRY=1 ... bash benchmarks/gpu_run.sh`, takes minutes on the CPU and is run by hand; see the script's header.)"""
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_run.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    wheels = set(re.findall(r"([a-z][a-z0-9-]*)==", text))
    # the packages the device machine lacks, and what they need that it lacks too
    assert {"diffusers", "hydra-core", "omegaconf", "antlr4-python3-runtime", "webdataset"} <= wheels
    assert "--budget-s" in text and "--out \"$OUT/throughput.json\"" in text
