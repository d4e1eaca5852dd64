"""Atomic writes: the target holds the old content or the new, never a part; nothing is left behind."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from illustrious.utils.files import atomic_path, atomic_save, atomic_write, atomic_write_json


def test_bytes_and_text_replace_the_target(tmp_path):
    target = tmp_path / "sub" / "a.bin"  # the folder is created
    with atomic_write(target) as f:
        f.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with atomic_write(target, "w") as f:
        f.write("héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write('{"v": 2, "half')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_writers_that_take_a_path(tmp_path):
    tensors = {"x": torch.arange(6.0).reshape(2, 3)}
    atomic_save(tmp_path / "t.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"k": "v"}))
    assert torch.equal(load_file(tmp_path / "t.safetensors")["x"], tensors["x"])
    table = pa.table({"a": [1, 2, 3]})
    atomic_save(tmp_path / "t.parquet", lambda tmp: pq.write_table(table, tmp))
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    assert sorted(os.listdir(tmp_path)) == ["t.parquet", "t.safetensors"]


def test_temporary_files_are_hidden_siblings(tmp_path):
    with atomic_path(tmp_path / "shard-000001.tar") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".shard-000001.tar.")
        assert not list(tmp_path.glob("shard-*"))  # readers globbing shards never see it
        tmp.write_bytes(b"x")
    assert (tmp_path / "shard-000001.tar").read_bytes() == b"x"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass
