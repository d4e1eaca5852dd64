"""Sharded checkpoint folders in a run's checkpoint folder: sealed by a manifest, named by `last.safetensors` (a
relative link), pruned, and chosen for resume like files (an incomplete or corrupted folder is set aside as `.bad`
and the older one used); DCP's pickled index is read with an allowlist that refuses anything else."""

from __future__ import annotations

import pickle
import shutil

import pytest

from illustrious import sharded_checkpoint
from illustrious.checkpoint_folder import CheckpointFolder, resume_checkpoint
from illustrious.checkpoint_io import CheckpointError
from tests.conftest import WritesMarker


def fake_sharded(folder: CheckpointFolder, step: int, seal: bool = True):
    path = folder.step_path(step)
    path.mkdir(parents=True)
    for rank in range(2):
        (path / f"__{rank}_0.distcp").write_bytes(bytes([step, rank]) * 100)
    (path / ".metadata").write_bytes(b"index")
    (path / "meta.pt").write_bytes(b"loop state")
    if seal:
        sharded_checkpoint.seal(path, global_step=step, epoch=0, world_size=2)
    return path


def test_folders_are_linked_pruned_and_resumed_newest_complete_first(tmp_path):
    folder = CheckpointFolder(tmp_path / "checkpoints")
    for step in (2, 4, 6):
        folder.point_last_at(fake_sharded(folder, step))
        folder.prune(keep_last=2)
    assert [s for s, _ in folder.snapshots()] == [4, 6]
    assert folder.last.is_symlink() and folder.last.readlink().name == "step-00000006.safetensors"  # relative
    assert resume_checkpoint(folder.dir) == (folder.last, None)  # verified; the strategy loads it

    copied = tmp_path / "copy"  # a copied run folder still points into itself
    shutil.copytree(folder.dir, copied, symlinks=True)
    assert (copied / "last.safetensors").resolve() == (copied / "step-00000006.safetensors").resolve()

    # the newest is corrupted (a shard's bytes changed): set aside, the older one is used
    shard = folder.step_path(6) / "__1_0.distcp"
    shard.write_bytes(b"\x00" + shard.read_bytes()[1:])
    path, _ = resume_checkpoint(folder.dir)
    assert path == folder.step_path(4)
    assert (folder.dir / "step-00000006.safetensors.bad").is_dir()

    # a folder without its manifest (stopped mid-save) is incomplete
    folder.point_last_at(fake_sharded(folder, 8, seal=False))
    with pytest.raises(CheckpointError, match="incomplete"):
        sharded_checkpoint.verify(folder.step_path(8))
    assert resume_checkpoint(folder.dir)[0] == folder.step_path(4)


def test_the_index_reader_refuses_anything_but_dcp_metadata(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(CheckpointError, match="not a readable DCP index"):
        sharded_checkpoint.load_index(tmp_path / ".metadata")
    assert not marker.exists()
