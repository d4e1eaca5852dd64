"""Scanning an image folder: a fast recursive listing, then image headers and sidecars read in parallel.

The listing (`os.scandir`, hidden entries skipped, symlinked folders followed once) pairs each image
with its sidecars by name: `a.jpg` takes `a.txt` / `a.jpg.txt` and `a.json` / `a.jpg.json` (the
gallery-dl convention). Its signature (a hash of every path, size and modification time that matters)
tells a changed folder from an unchanged one without opening a file. Reading an entry opens the image
header only (size, format, EXIF orientation) and the sidecars; problems are returned, never raised.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from illustrious.data.images.decode import ImageError, image_extensions, read_header
from illustrious.data.index.labels import has_caption
from illustrious.data.index.sidecars import (
    TAG_CATEGORIES,
    Metadata,
    SidecarError,
    read_caption,
    read_metadata,
)

log = logging.getLogger(__name__)

CHUNK = 512  # entries per task: large enough to amortise inter-process overhead, small for a smooth progress bar
PARALLEL_MIN = 20_000  # fewer entries are read in-process: starting spawned workers costs seconds

Problem = tuple[str, str, str]  # (reason, relative path, detail)


@dataclass(frozen=True)
class FileSet:
    """An image and its sidecars, as paths relative to the root (POSIX separators)."""

    path: str
    txt: str | None
    json: str | None
    size: int
    mtime_ns: int  # newest of the image and its sidecars: a changed caption changes the entry


def list_folder(root: Path, extensions: frozenset[str] | None = None) -> list[FileSet]:
    """Every image under `root` with its sidecars, sorted by path."""
    extensions = extensions or image_extensions()
    found: list[FileSet] = []
    visited: set[tuple[int, int]] = set()
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        stat = folder.stat()
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop, or a folder reached twice
            continue
        visited.add((stat.st_dev, stat.st_ino))
        files: dict[str, os.DirEntry] = {}
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir():
                            stack.append(Path(entry.path))
                        elif entry.is_file():
                            files[entry.name] = entry
                    except OSError:
                        continue  # a dangling link or a vanished entry: nothing to train on
        except PermissionError as e:
            log.warning("Cannot list %s (%s); its images are left out.", folder, e)
            continue
        prefix = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name, entry in files.items():
            stem, ext = os.path.splitext(name)
            if ext.lower() not in extensions:
                continue
            txt = files.get(stem + ".txt") or files.get(name + ".txt")
            meta = files.get(stem + ".json") or files.get(name + ".json")
            try:
                stats = [e.stat() for e in (entry, txt, meta) if e is not None]
            except OSError:
                continue
            found.append(FileSet(prefix + name, txt and prefix + txt.name, meta and prefix + meta.name,
                                 stats[0].st_size, max(s.st_mtime_ns for s in stats)))
    found.sort(key=lambda f: f.path)
    return found


def signature(files: Sequence[FileSet]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.path}\0{f.txt}\0{f.json}\0{f.size}\0{f.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return f"{len(files)}:{digest.hexdigest()[:32]}"


def read_entry(root: Path, files: FileSet) -> tuple[dict | None, list[Problem]]:
    """A manifest row for one image, or None and the reason it is unreadable.

    Problems with its sidecars (and a missing caption) are recorded in the row's `problems`."""
    problems: list[Problem] = []
    try:
        header = read_header(root / files.path, bomb_pixels=None)
    except ImageError as e:
        return None, [(e.reason, files.path, e.detail)]
    caption, meta = None, Metadata()
    if files.txt:
        try:
            caption = read_caption(root / files.txt) or None
        except SidecarError as e:
            problems.append((e.reason, files.txt, e.detail))
    if files.json:
        try:
            meta = read_metadata(root / files.json)
        except SidecarError as e:
            problems.append((e.reason, files.json, e.detail))
    caption = caption or meta.caption
    if not has_caption(caption, meta.tags):
        problems.append(("missing_caption", files.path, "no .txt caption and no tags in a .json sidecar"))
    row = {
        "path": files.path, "width": header.width, "height": header.height, "orientation": header.orientation,
        "format": header.format, "file_size": files.size, "mtime_ns": files.mtime_ns, "caption": caption,
        **{f"tags_{c}": meta.tags[c] for c in TAG_CATEGORIES},
        "rating": meta.rating, "score": meta.score, "created": meta.created,
        "problems": [{"reason": r, "path": p, "detail": d} for r, p, d in problems],
    }
    return row, []


def _read_chunk(root: Path, chunk: list[FileSet]) -> tuple[list[dict], list[Problem]]:
    rows, problems = [], []
    for files in chunk:
        row, found = read_entry(root, files)
        problems.extend(found)
        if row is not None:
            rows.append(row)
    return rows, problems


def read_entries(root: Path, files: Sequence[FileSet], workers: int = 1,
                 progress: Callable[[int], None] | None = None) -> tuple[list[dict], list[Problem]]:
    """Rows of the readable images (in input order) and the problems of the unreadable ones; in worker
    processes when there are enough entries to pay for starting them."""
    chunks = [list(files[i:i + CHUNK]) for i in range(0, len(files), CHUNK)]
    rows: list[dict] = []
    problems: list[Problem] = []
    results = _map_chunks(root, chunks, workers if len(files) >= PARALLEL_MIN else 1)
    for chunk, (chunk_rows, chunk_problems) in zip(chunks, results, strict=True):
        rows.extend(chunk_rows)
        problems.extend(chunk_problems)
        if progress:
            progress(len(chunk))
    return rows, problems


def _map_chunks(root: Path, chunks: list[list[FileSet]], workers: int) -> Iterator[tuple[list[dict], list[Problem]]]:
    if workers <= 1:
        for chunk in chunks:
            yield _read_chunk(root, chunk)
        return
    # spawn: the parent may hold threads (torch, tokenizers) that a fork would copy in a broken state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_read_chunk, [root] * len(chunks), chunks)
