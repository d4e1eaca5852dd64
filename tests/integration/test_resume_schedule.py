"""A run extended with a larger trainer.max_steps continues on the new learning-rate schedule."""

from __future__ import annotations

import json

import pytest

from illustrious.train import train


def logged(path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_extended_run_follows_the_new_schedule(make_config, tmp_path):
    straight_dir, extended_dir = tmp_path / "straight", tmp_path / "extended"
    quiet = ["callbacks.samples=null", "callbacks.composition=null", "optim.lr_scheduler.num_warmup_steps=1"]
    train(make_config(*quiet, "trainer.max_steps=4", output_dir=straight_dir))
    train(make_config(*quiet, "trainer.max_steps=2", output_dir=extended_dir))
    train(make_config(*quiet, "trainer.max_steps=4", output_dir=extended_dir))  # resume=true: continues at step 2
    straight, extended = logged(straight_dir / "steps.jsonl"), logged(extended_dir / "steps.jsonl")
    assert sorted(extended) == [1, 2, 3, 4]
    # each line's lr is the next step's (logged after the scheduler stepped): the first run logged step 2's
    # under its own 2-step schedule; from the resumed step on both follow the 4-step one
    for step in (3, 4):
        assert extended[step]["lr"] == straight[step]["lr"]
    for step in (1, 2, 3, 4):  # step 4's loss follows the third update, the first one after resuming
        assert extended[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-5)
