"""Writing files atomically: a reader (another rank, a resumed run) sees the old file or the new one, never half.

The data goes to a temporary file in the target's folder (same file system, so the rename is atomic), is
flushed and fsynced, replaces the target with `os.replace`, and the folder is fsynced so the rename itself
survives a crash. Temporary names start with a dot, so folder scans and `shard-*` globs never see them;
on any error the temporary file is removed and the target is left as it was.

    with atomic_write(path, "w") as f:        # text or bytes ("wb", the default)
        f.write(text)
    atomic_save(path, lambda tmp: save_file(tensors, tmp))    # a writer that takes a path
    with atomic_path(path) as tmp:            # the same, as a context manager (e.g. a TarWriter)
        ...
    atomic_write_json(path, obj)
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (where the platform can open a folder; elsewhere a no-op)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yield an open file ("wb" or "w"; text defaults to UTF-8) that replaces `path` when the block ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), encoding=encoding) as f:
        yield f
        f.flush()


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], Any]) -> None:
    """Call `writer(temporary_path)` (e.g. safetensors' save_file, pyarrow's write_table) and move the file
    it wrote onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(obj, indent=indent, ensure_ascii=False))
