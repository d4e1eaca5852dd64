"""The validation loss: one x0 axis for every objective, fixed times and noise, held-out splits of every source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from illustrious.backbones.base import Conditioning
from illustrious.data.sources.held_out import held_out_mask, key_hash, validation_batches
from illustrious.eval.validation_loss import ValidationLoss
from illustrious.objectives import EpsilonObjective, FlowObjective, VPredictionObjective
from illustrious.objectives.base import expand_like

OBJECTIVES = {
    "eps": lambda: EpsilonObjective(),
    "vpred_ztsnr": lambda: VPredictionObjective(zero_terminal_snr=True),
    "flow": lambda: FlowObjective(),
}
COND = Conditioning(tokens=torch.zeros(2, 1, 1), mask=None, pooled=None)


class OffsetOracle:
    """A 'backbone' whose clean estimate is x0 + offset, written in the objective's own parameterization:
    the target for the clean image x0 + offset and the noise that x_t then implies."""

    def __init__(self, objective, x0, offset):
        self.objective, self.x0, self.offset = objective, x0, offset

    def __call__(self, x_t, t, cond, batch):
        alpha, sigma = self.objective.alpha_sigma(t)
        clean = self.x0 + self.offset
        implied_noise = (x_t - expand_like(alpha, x_t) * clean) / expand_like(sigma, x_t)
        return self.objective.target(clean, implied_noise, t)


def x0_batch(seed=0):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_exact_model_scores_zero_and_offset_model_scores_its_offset_in_every_objective(name):
    objective = OBJECTIVES[name]()
    x0 = x0_batch()
    validation = ValidationLoss(bins=4, seed=3)
    exact = validation(OffsetOracle(objective, x0, 0.0), objective, x0, COND, {}, batch_idx=0)
    assert set(exact) == {"val/x0_mse", "val/loss", *(f"val/x0_mse_bin_{k}" for k in range(4))}
    assert all(float(v) < 1e-8 for v in exact.values())
    # a clean estimate off by 0.3 everywhere: x0 error 0.09 in every bin, whatever the objective predicts
    off = validation(OffsetOracle(objective, x0, 0.3), objective, x0, COND, {}, batch_idx=0)
    for k in range(4):
        torch.testing.assert_close(off[f"val/x0_mse_bin_{k}"], torch.tensor(0.09), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(off["val/x0_mse"], torch.tensor(0.09), rtol=1e-4, atol=1e-5)


def test_objective_loss_is_in_its_own_space():
    """val/loss is each objective's own target error: the same x0 error costs eps, v and flow different amounts."""
    x0 = x0_batch()
    losses = {}
    for name, make in OBJECTIVES.items():
        objective = make()
        losses[name] = float(ValidationLoss(bins=4)(OffsetOracle(objective, x0, 0.3), objective, x0, COND, {}, 0)["val/loss"])
    # per unit of x0 error the target error is 1 / alpha_t * sigma_t... for eps, 1 / alpha_t for v, 1 / t for flow
    assert len({round(v, 4) for v in losses.values()}) == 3


def test_hand_computed_flow_reference():
    """Flow with a model that predicts 0: x0_hat = x_t, so the error is mean(t^2 (noise - x0)^2) at each midpoint."""
    objective = FlowObjective()
    x0 = x0_batch()
    validation = ValidationLoss(bins=2, seed=5)
    metrics = validation(lambda x, t, c, b: torch.zeros_like(x), objective, x0, COND, {}, batch_idx=7, rank=1)
    noise = validation.noise(x0, 7, 1)
    for k, t in enumerate((0.25, 0.75)):
        torch.testing.assert_close(metrics[f"val/x0_mse_bin_{k}"], (t**2 * (noise - x0) ** 2).mean())
        torch.testing.assert_close(metrics["val/loss"], ((noise - x0) ** 2).mean())  # target noise - x0, pred 0


def test_times_are_bin_midpoints_on_the_grid():
    torch.testing.assert_close(ValidationLoss(bins=4).times(FlowObjective()), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    eps = ValidationLoss(bins=3).times(EpsilonObjective())
    torch.testing.assert_close(eps * 1000, torch.tensor([166.0, 500.0, 833.0]))  # floor(1000 t), as training


def test_fixed_noise_reruns_identically_and_leaves_the_training_rng_alone():
    objective = VPredictionObjective(zero_terminal_snr=True)
    x0 = x0_batch()
    model = OffsetOracle(objective, x0, 0.1)

    def noisy_model(x_t, t, cond, batch):  # a model that draws from the global RNG (dropout, say)
        return model(x_t, t, cond, batch) + 0 * torch.randn(1)

    validation = ValidationLoss(bins=5, seed=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = validation(noisy_model, objective, x0, COND, {}, batch_idx=2)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # another training seed: the same validation numbers
    again = validation(noisy_model, objective, x0, COND, {}, batch_idx=2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(validation.noise(x0, 2), validation.noise(x0, 3))  # batches get their own noise
    assert not torch.equal(validation.noise(x0, 2), ValidationLoss(seed=2).noise(x0, 2))


# -- held-out splits --------------------------------------------------------------------------------------------
def test_held_out_mask_is_stable_per_key():
    keys = [f"dir/img{i:05d}.png" for i in range(20000)]
    mask = held_out_mask(keys, fraction=0.05)
    assert 0.04 < mask.mean() < 0.06
    # an image's membership depends on its own path only: a subset or a reordering keeps it
    subset = keys[::7][::-1]
    assert np.array_equal(held_out_mask(subset, fraction=0.05), np.array([key_hash(k) < 0.05 for k in subset]))
    assert np.array_equal(held_out_mask(subset, fraction=0.05), mask[::7][::-1])
    exact = held_out_mask(keys[:100], count=7)
    assert exact.sum() == 7 and not held_out_mask(keys, 0.0).any()


def test_held_out_settings_are_checked():
    from illustrious.errors import ConfigError

    with pytest.raises(ConfigError, match="val_fraction"):
        held_out_mask(["a"], fraction=1.0)
    with pytest.raises(ConfigError, match="both set"):
        held_out_mask(["a", "b"], fraction=0.1, count=1)
    with pytest.raises(ConfigError, match="all 2 images"):
        held_out_mask(["a", "b"], count=2)


def test_validation_batches_one_bucket_each_equal_per_rank():
    buckets = np.array([0, 1, 0, 0, 1, 2, 0])
    one = validation_batches(buckets, 2)
    assert [list(b) for b in one] == [[0, 2], [3, 6], [1, 4], [5]] and all(b.epoch == 0 for b in one)
    ranks = [validation_batches(buckets, 2, rank=r, world_size=3) for r in range(3)]
    assert [len(r) for r in ranks] == [2, 2, 2]  # 4 batches padded to 6 with the first ones
    assert sorted(map(tuple, sum(ranks, []))) == sorted([(0, 2), (3, 6), (1, 4), (5,), (0, 2), (3, 6)])


def test_shapes_val_loader_is_the_held_out_stream():
    from illustrious.data.sources.shapes_datamodule import ShapesDataModule

    dm = ShapesDataModule(length=16, batch_size=4, val_samples=6)
    batches = list(dm.val_dataloader())
    assert [len(b["captions"]) for b in batches] == [4, 2]
    expected = torch.stack([torch.from_numpy(dm.held_out[i]["pixels"]) for i in range(6)])
    torch.testing.assert_close(torch.cat([b["pixels"] for b in batches]), expected)
    again = list(ShapesDataModule(length=16, batch_size=4, val_samples=6).val_dataloader())
    assert [b["captions"] for b in again] == [b["captions"] for b in batches]  # captions drawn per (seed, 0, index)
    assert ShapesDataModule(val_samples=0).val_dataloader() == []


def test_folder_holds_out_by_path_and_validates_on_those(tmp_path):
    from illustrious.data.images.settings import ImageSettings
    from illustrious.data.sources.folder_datamodule import FolderDataModule

    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        Image.fromarray(np.full((32, 32, 3), i * 20, dtype=np.uint8)).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(f"picture {i}")
    settings = ImageSettings(min_side=32, max_aspect=4.0, bucket_megapixels=(0.0006, 0.0012), bucket_step=16)
    dm = FolderDataModule(root=str(root), images=settings, batch_size=2, num_workers=0, scan_workers=1, val_count=3)
    dm.check_pixel_multiple(8)
    dm.setup("fit")
    held = sorted(dm.val_table.column("path").to_pylist())
    train = set(dm.selection.table.column("path").to_pylist())
    assert len(held) == 3 and not train & set(held) and len(train) == 9
    all_paths = [f"img{i:02d}.png" for i in range(12)]
    assert held == sorted(np.array(all_paths)[held_out_mask(all_paths, count=3)].tolist())
    captions = [c for b in dm.val_dataloader() for c in b["captions"]]
    assert sorted(captions) == sorted(f"picture {int(p[3:5])}" for p in held)
    # the training loader never sees them
    seen = {p for b in dm.train_dataloader() for p in b["path"]}
    assert seen <= train


def test_training_validates_every_n_steps_and_reruns_give_the_same_numbers(make_config):
    from illustrious.train import train

    cfg = make_config("validation.every_n_steps=1", "validation.batches=1", "validation.bins=3", "data.val_samples=4",
                      "callbacks.samples=null", "callbacks.composition=null", "resume=false")
    metrics, objects = train(cfg)
    trainer, module, datamodule = objects["trainer"], objects["module"], objects["datamodule"]
    assert trainer.val_check_interval == 1 and trainer.check_val_every_n_epoch is None
    assert {"val/x0_mse", "val/loss", "val/x0_mse_bin_0", "val/x0_mse_bin_2"} <= set(metrics)
    assert np.isfinite(metrics["val/x0_mse"])
    # the last validation ran after the last step, on these weights: validating again gives the same numbers
    torch.manual_seed(12345)  # whatever the global RNG holds
    (again,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    for key in ("val/x0_mse", "val/loss", "val/x0_mse_bin_1"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_validation_off_leaves_the_trainer_settings():
    from omegaconf import OmegaConf

    from illustrious.train import validation_schedule

    assert validation_schedule(OmegaConf.create({"every_n_steps": 0, "batches": 4})) == {}
    assert validation_schedule(OmegaConf.create({"every_n_steps": 50, "batches": None}), accumulate=4) == {
        "val_check_interval": 200, "check_val_every_n_epoch": None, "limit_val_batches": 1.0}


def test_webdataset_holds_out_the_last_shards(tmp_path):
    from tests.unit.test_data_webdataset import shards, web

    _, index = shards(tmp_path, shard_size=4)
    full = web(tmp_path)
    held = web(tmp_path, val_shards=1)
    assert held.val_urls == full.urls[-1:] and held.urls == full.urls[:-1]
    assert held.total_samples == full.total_samples - index["shards"][-1]["count"]
    val_paths = {p for b in held.val_dataloader() for p in b["path"]}
    train_paths = {p for b in held.train_dataloader() for p in b["path"]}
    assert val_paths and not val_paths & train_paths
    # named shards: the same split
    named = web(tmp_path, val_urls=full.urls[-1:])
    assert named.urls == held.urls
    assert [b["path"] for b in named.val_dataloader()] == [b["path"] for b in held.val_dataloader()]
