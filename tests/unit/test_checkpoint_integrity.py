"""Checkpoint files that never corrupt silently: checksums, truncation, NaN/Inf, a full disk, and choosing the
newest complete checkpoint to resume from."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
import torch

from illustrious.checkpoint_folder import CheckpointFolder, resume_checkpoint
from illustrious.checkpoint_io import (
    CheckpointError,
    NonFiniteError,
    load_checkpoint_file,
    read_header,
    save_checkpoint_file,
)


def state(step: int, value: float = 1.0) -> dict:
    return {"state_dict": {"w": torch.full((64,), value), "b": torch.zeros(3, dtype=torch.bfloat16)},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4)}}}], "global_step": step, "epoch": 0,
            "callbacks": {"ModelCheckpoint": {"kth_value": torch.tensor(float("inf"))}}}  # an allowed infinity


def data_start(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_metadata_has_step_and_checksum_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint_file(state(7), path)
    meta = read_header(path)["__metadata__"]
    assert meta["global_step"] == "7" and meta["tensor_checksum"].startswith("sha256:")
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    assert load_checkpoint_file(path)["global_step"] == 7


def test_corrupted_tensor_bytes_are_detected(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint_file(state(1), path)
    raw = bytearray(path.read_bytes())
    raw[data_start(path) + 5] ^= 0x40  # one bit of one weight, header and length untouched
    path.write_bytes(bytes(raw))
    read_header(path)  # the cheap check cannot see it...
    with pytest.raises(CheckpointError, match=r"c\.safetensors is corrupted"):
        load_checkpoint_file(path)  # ...the checksum does


@pytest.mark.parametrize("keep", [0, 5, 40, -3])
def test_truncated_files_are_detected(tmp_path, keep):
    path = tmp_path / "c.safetensors"
    save_checkpoint_file(state(1), path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(CheckpointError, match="truncated|corrupted header"):
        load_checkpoint_file(path)


def test_nonfinite_weights_are_never_written_and_refused_when_read(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint_file(state(1), path)
    before = path.read_bytes()
    bad = state(2)
    bad["state_dict"]["w"][3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"state_dict\.w holds NaN"):
        save_checkpoint_file(bad, path)
    assert path.read_bytes() == before  # the good file is untouched
    # a file written by something else (or before this check existed) is refused with file and tensor named
    import illustrious.checkpoint_io as io

    original = io.check_finite
    io.check_finite = lambda *a, **k: None
    try:
        save_checkpoint_file(bad, tmp_path / "nan.safetensors")
    finally:
        io.check_finite = original
    with pytest.raises(NonFiniteError, match=r"nan\.safetensors: tensor state_dict\.w holds NaN"):
        load_checkpoint_file(tmp_path / "nan.safetensors")


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    """A full disk, simulated where the real one (below) cannot be mounted: the writer fails half-way."""
    import safetensors.torch

    path = tmp_path / "c.safetensors"
    save_checkpoint_file(state(1), path)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match=r"Disk full while writing checkpoint .*c\.safetensors \(the previous "
                                      r"c\.safetensors is kept\)") as err:
        save_checkpoint_file(state(2), path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.fixture
def tiny_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", f"tmpfs-{uuid.uuid4().hex[:6]}",
                                            str(where)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (the simulated full disk above covers other machines)")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_real_full_disk(tiny_disk):
    path = tiny_disk / "c.safetensors"
    save_checkpoint_file(state(1), path)  # ~1 KB
    before = path.read_bytes()
    big = state(2)
    big["state_dict"]["w"] = torch.ones(40_000)  # 160 KB: does not fit
    with pytest.raises(OSError, match="Disk full") as err:
        save_checkpoint_file(big, path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tiny_disk.iterdir()) == ["c.safetensors"]


# -- the run's folder ---------------------------------------------------------------------------------------
def save_step(folder: CheckpointFolder, step: int, keep_last: int = 2):
    path = folder.step_path(step)
    save_checkpoint_file(state(step, value=float(step)), path)
    folder.point_last_at(path)
    folder.prune(keep_last)


def test_keep_last_and_one_last_file(tmp_path):
    folder = CheckpointFolder(tmp_path)
    for step in (3, 6, 9, 10):
        save_step(folder, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "step-00000009.safetensors",
                                                          "step-00000010.safetensors"]
    assert load_checkpoint_file(folder.last)["global_step"] == 10
    assert os.path.samefile(folder.last, folder.step_path(10))  # a link, not a second copy


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog):
    folder = CheckpointFolder(tmp_path)
    for step in (4, 8):
        save_step(folder, step)
    raw = bytearray(folder.step_path(8).read_bytes())
    raw[data_start(folder.step_path(8)) + 1] ^= 1
    folder.step_path(8).write_bytes(bytes(raw))  # a new inode: last still names the old, good bytes
    folder.last.unlink()
    os.link(folder.step_path(8), folder.last)  # last and step 8 are the same corrupted file
    path, ckpt = resume_checkpoint(tmp_path)
    assert path == folder.step_path(4) and ckpt["global_step"] == 4
    assert "is corrupted" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors.bad", "step-00000004.safetensors",
                                                          "step-00000008.safetensors.bad"]


def test_truncated_last_falls_back(tmp_path):
    folder = CheckpointFolder(tmp_path)
    save_step(folder, 2, keep_last=3)
    save_step(folder, 4, keep_last=3)
    folder.last.unlink()
    folder.last.write_bytes(folder.step_path(4).read_bytes()[:-10])  # cut off while being copied
    folder.step_path(4).unlink()
    path, _ = resume_checkpoint(tmp_path)
    assert path == folder.step_path(2)


def test_no_complete_checkpoint_is_an_error_not_a_silent_fresh_start(tmp_path):
    folder = CheckpointFolder(tmp_path)
    save_step(folder, 2)
    folder.step_path(2).write_bytes(b"\x00" * 20)  # same inode as last: both broken
    with pytest.raises(CheckpointError, match="No complete checkpoint .* resume=false"):
        resume_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="No complete checkpoint"):  # and again on the next start
        resume_checkpoint(tmp_path)
    assert resume_checkpoint(tmp_path, resume=False) is None


def test_the_runs_own_progress_wins_over_ckpt_path(tmp_path):
    start = tmp_path / "pretrained.safetensors"
    save_checkpoint_file(state(100), start)
    run = CheckpointFolder(tmp_path / "run")
    assert resume_checkpoint(run.dir, ckpt_path=str(start))[0] == start  # a fresh run starts from ckpt_path
    save_step(run, 150)
    path, ckpt = resume_checkpoint(run.dir, ckpt_path=str(start))  # a restart continues its own progress
    assert path == run.last and ckpt["global_step"] == 150


def test_a_bad_explicit_ckpt_path_is_named(tmp_path):
    start = tmp_path / "start.safetensors"
    save_checkpoint_file(state(1), start)
    start.write_bytes(start.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"start\.safetensors is truncated"):
        resume_checkpoint(tmp_path / "run", ckpt_path=str(start))


@pytest.mark.parametrize(("max_epochs", "current_epoch", "final"), [(-1, 0, False), (-1, 5, False), (2, 0, False),
                                                                    (2, 1, True)])
def test_only_the_last_epoch_of_an_epoch_limit_ends_the_run(max_epochs, current_epoch, final):
    """At an epoch's last batch RunCheckpoint saves only when that epoch ends the run; -1 (Lightning's value when
    only max_steps is set) means no epoch limit, so a max_steps run does not write a checkpoint every epoch."""
    import lightning as L

    from illustrious.callbacks.checkpointing import RunCheckpoint

    trainer = L.Trainer(max_epochs=max_epochs, max_steps=24, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit_loop.epoch_loop.batch_progress.is_last_batch = True
    trainer.fit_loop.epoch_progress.current.completed = current_epoch
    assert trainer.current_epoch == current_epoch
    assert RunCheckpoint._is_final(trainer) is final
