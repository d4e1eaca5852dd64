"""The manifest: one Parquet row per readable image, so a second start over a million files does not rescan.

It stores what training needs (relative path, upright size, EXIF orientation, caption, tags by category,
rating, score, date, file size and time) and, in its schema metadata, the listing signature. On start
the folder is listed (cheap) and compared with the signature: unchanged means the manifest is used as
is; changed means only new or modified files are read again (rows of unchanged files are reused);
`rescan=True` reads everything. Only the first process of a distributed job scans; the others wait for
the manifest and read it. Writes are atomic (illustrious.utils.files).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from illustrious.data.index.report import ProblemReport
from illustrious.data.index.scan import FileSet, list_folder, read_entries, signature
from illustrious.data.index.sidecars import TAG_CATEGORIES
from illustrious.utils.files import atomic_save

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("orientation", pa.int8()),
    ("format", pa.string()),
    ("file_size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("caption", pa.string()),
    *[(f"tags_{c}", pa.list_(pa.string())) for c in TAG_CATEGORIES],
    ("rating", pa.string()),
    ("score", pa.float64()),
    ("created", pa.string()),
    # sidecar problems of this image (the image itself was readable), kept so reports survive reuse
    ("problems", pa.list_(pa.struct([("reason", pa.string()), ("path", pa.string()), ("detail", pa.string())]))),
])
DEFAULT_DIR = ".illustrious"  # hidden, so scans never list it
WAIT_POLL_S = 2.0


@dataclass
class Manifest:
    table: pa.Table
    signature: str

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)


def report_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".report.json")


def default_location(root: Path) -> Path:
    """<root>/.illustrious/manifest.parquet, or a per-root folder in the user cache if root is read-only."""
    inside = root / DEFAULT_DIR / "manifest.parquet"
    if writable(inside.parent):
        return inside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "illustrious" / "manifests"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    fallback = cache / key / "manifest.parquet"
    log.info("%s is not writable; the manifest goes to %s", root, fallback)
    return fallback


def writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def write_manifest(path: Path, table: pa.Table, listing_signature: str, root: Path) -> Manifest:
    table = table.replace_schema_metadata({"illustrious.signature": listing_signature,
                                           "illustrious.version": FORMAT_VERSION,
                                           "illustrious.root": str(root)})
    atomic_save(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return Manifest(table, listing_signature)


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA) if rows else SCHEMA.empty_table()


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, or None if it is missing, unreadable or from another format version."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("illustrious.version") != FORMAT_VERSION or not table.schema.equals(SCHEMA, check_metadata=False):
        return None
    return Manifest(table, meta.get("illustrious.signature", ""))


def is_first_process() -> bool:
    """True unless the launcher (torchrun, SLURM, Lightning's DDP launcher) says this is another rank."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def load_or_scan(root: Path, path: Path, *, rescan: bool = False, workers: int = 8, progress: bool = True,
                 first_process: bool | None = None, wait_s: float = 3600.0) -> tuple[Manifest, ProblemReport, bool]:
    """The manifest of `root` (scanned, updated or reused) with its scan report; the flag says if files were read."""
    first_process = is_first_process() if first_process is None else first_process
    if not first_process:
        return _wait_for(path, wait_s), _read_report(path), False
    start = time.perf_counter()
    files = list_folder(root)
    listing_signature = signature(files)
    previous = None if rescan else read_manifest(path)
    if previous is not None and previous.signature == listing_signature:
        log.info("Manifest %s is up to date (%d images; listing took %.1fs).", path, len(previous),
                 time.perf_counter() - start)
        return previous, _read_report(path), False
    table, report = _scan(root, files, previous, workers, progress)
    manifest = write_manifest(path, table, listing_signature, root)
    report.write(report_path(path), root=str(root), images_listed=len(files), images_in_manifest=len(manifest))
    log.info("Scanned %s in %.1fs: %d images listed, %d readable; %s. Report: %s", root,
             time.perf_counter() - start, len(files), len(manifest), report.summary(), report_path(path))
    return manifest, report, True


def _scan(root: Path, files: list[FileSet], previous: Manifest | None, workers: int,
          progress: bool) -> tuple[pa.Table, ProblemReport]:
    """The manifest table for `files`, reusing previous rows of files whose size and time are unchanged
    (as Arrow data: a million reused rows never become Python objects)."""
    keep: list[int] = []
    if previous is not None and len(previous):
        stamps = zip(previous.column("path"), previous.column("file_size"), previous.column("mtime_ns"), strict=True)
        index = {p: (int(s), int(m), i) for i, (p, s, m) in enumerate(stamps)}
        keep = [index[f.path][2] for f in files if index.get(f.path, (None, None))[:2] == (f.size, f.mtime_ns)]
    reused = previous.table.take(keep) if keep else SCHEMA.empty_table()
    reused_paths = set(reused.column("path").to_pylist())
    todo = [f for f in files if f.path not in reused_paths]
    if keep:
        log.info("Folder changed: reading %d new or modified files, reusing %d manifest rows.", len(todo), len(keep))
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="Scanning images", unit="img", mininterval=1.0)
    try:
        new_rows, unreadable = read_entries(root, todo, workers, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    table = pa.concat_tables([reused.cast(SCHEMA), rows_to_table(new_rows)]).sort_by("path")  # listing order
    report = ProblemReport()
    report.extend(unreadable)
    report.extend((p["reason"], p["path"], p["detail"])  # sidecar problems travel with their rows
                  for p in pc.list_flatten(table.column("problems")).to_pylist())
    return table, report


def _read_report(path: Path) -> ProblemReport:
    try:
        return ProblemReport.read(report_path(path))
    except (OSError, ValueError, KeyError):
        return ProblemReport()


def _wait_for(path: Path, wait_s: float) -> Manifest:
    deadline = time.monotonic() + wait_s
    while True:
        manifest = read_manifest(path)
        if manifest is not None:
            return manifest
        if time.monotonic() > deadline:
            raise TimeoutError(f"Waited {wait_s:.0f}s for the first process to write the manifest {path}; "
                               "did it fail? (Its log says why.)")
        time.sleep(WAIT_POLL_S)
