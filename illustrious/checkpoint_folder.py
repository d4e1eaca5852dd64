"""A run's checkpoint folder: `step-XXXXXXXX.safetensors` snapshots, the newest `keep_last` of them kept, and
`last.safetensors`, always a name for the newest (a hard link, or a copy where links are impossible).

Sharded strategies (FSDP2 with `save_distributed_checkpoint`) save each snapshot as a folder of the same name
(illustrious.sharded_checkpoint: every rank's shards and a manifest sealing it); `last.safetensors` is then a
relative symbolic link to the newest folder (so a copied run folder still points into itself).

Saving and resuming agree on this one folder whatever `ckpt_path` said and wherever the run folder was
copied: nothing in a checkpoint records where it lives. Resuming picks the newest *complete* checkpoint:
each candidate, newest step first, is read and verified (header and length, checksum of the tensor bytes,
finite weights); one that fails is reported, renamed to `<name>.bad` (never deleted) and the next older
one is tried.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from illustrious import sharded_checkpoint
from illustrious.checkpoint_io import load_checkpoint_file, read_header
from illustrious.utils.files import fsync_file, fsync_folder, temporary_name

log = logging.getLogger(__name__)

LAST = "last.safetensors"
STEP_PATTERN = re.compile(r"^step-(\d+)\.safetensors$")


@dataclass
class Rejected:
    path: Path
    reason: str


class CheckpointFolder:
    def __init__(self, dirpath: str | Path):
        self.dir = Path(dirpath)
        self.rejected: list[Rejected] = []

    @property
    def last(self) -> Path:
        return self.dir / LAST

    def step_path(self, step: int) -> Path:
        return self.dir / f"step-{step:08d}.safetensors"

    def snapshots(self) -> list[tuple[int, Path]]:
        """(step, path) of the step files, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := STEP_PATTERN.match(p.name))]
        return sorted(found)

    # -- after a save ------------------------------------------------------------------------------------
    def point_last_at(self, snapshot: Path) -> None:
        """Make `last.safetensors` name `snapshot`, atomically (a reader sees the old or the new, never neither)."""
        tmp = temporary_name(self.last)
        if snapshot.is_dir():  # a sharded folder: folders cannot be hard-linked
            os.symlink(snapshot.name, tmp)
            os.replace(tmp, self.last)
            fsync_folder(self.dir)
            return
        try:
            os.link(snapshot, tmp)
        except OSError:  # file systems without hard links: a copy, flushed before it takes the name
            shutil.copyfile(snapshot, tmp)
            fsync_file(tmp)
        os.replace(tmp, self.last)
        fsync_folder(self.dir)

    def prune(self, keep_last: int) -> None:
        """Delete all but the newest `keep_last` step files (`last` keeps its own link to the newest)."""
        for _, path in self.snapshots()[:-keep_last] if keep_last > 0 else []:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # -- choosing where to resume -------------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Checkpoint files, newest step first, `last` first among equals (it usually names the same file
        as the newest step file: a good one is read once, a bad one is set aside under both names)."""
        paths = ([self.last] if self.last.exists() else []) + [p for _, p in reversed(self.snapshots())]
        ranked = [(self._step_of(p), p != self.last, p) for p in paths]
        return [p for _, _, p in sorted(ranked, key=lambda r: (-r[0], r[1]))]

    def _step_of(self, path: Path) -> int:
        try:
            if path.is_dir():
                return int(sharded_checkpoint.read_manifest(path)["global_step"])
            return int((read_header(path).get("__metadata__") or {}).get("global_step", -1))
        except Exception:
            m = STEP_PATTERN.match(path.name)
            return int(m.group(1)) if m else -1  # unreadable: verification below reports it

    def newest_complete(self, allow_pickle: bool = False) -> tuple[Path, dict | None] | None:
        """The newest checkpoint that verifies, loaded (a sharded folder: verified, its manifest in place of
        the contents, which only the sharded strategy can load); bad ones are reported and set aside as `.bad`."""
        for path in self.candidates():
            try:
                return path, read_verified(path, allow_pickle)
            except Exception as e:  # truncated, corrupted, non-finite, unreadable
                self.reject(path, f"{type(e).__name__}: {e}")
        return None

    def reject(self, path: Path, reason: str) -> None:
        self.rejected.append(Rejected(path, reason))
        bad = path.with_name(path.name + ".bad")
        where = "left in place"
        if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":  # one renamer
            try:
                os.replace(path, bad)
                where = f"renamed to {bad.name}"
            except OSError:
                pass
        log.error("Skipping checkpoint %s (%s); %s. Trying an older one.", path, reason, where)


def read_verified(path: Path, allow_pickle: bool = False) -> dict | None:
    """A checkpoint file read and verified, or None for a verified sharded folder (loaded later by the strategy)."""
    if path.is_dir():
        sharded_checkpoint.verify(path)
        return None
    return load_checkpoint_file(path, allow_pickle=allow_pickle)


def resume_checkpoint(dirpath: str | Path, ckpt_path: str | None = None, resume: bool = True,
                      allow_pickle: bool = False) -> tuple[Path, dict | None] | None:
    """Where a run continues from, read and verified: the newest complete checkpoint of its own folder
    (with `resume`), else the explicit `ckpt_path`, else None (a fresh start).

    The run's own progress wins over `ckpt_path`: a restarted job with the same command line continues
    where it stopped instead of going back to the file it started from.
    """
    folder = CheckpointFolder(dirpath)
    if resume:
        found = folder.newest_complete(allow_pickle)
        if found is not None:
            if ckpt_path:
                log.info("Resuming from this run's own %s; ckpt_path=%s only starts a run that has no checkpoint "
                         "of its own yet.", found[0], ckpt_path)
            else:
                log.info("Resuming from %s", found[0])
            return found
        bad = sorted(folder.dir.glob("*.bad")) if folder.dir.is_dir() else []
        if bad and not ckpt_path:
            from illustrious.checkpoint_io import CheckpointError

            reasons = "; ".join(f"{r.path.name}: {r.reason}" for r in folder.rejected) or "rejected earlier"
            raise CheckpointError(
                f"No complete checkpoint in {folder.dir} to resume from ({reasons}). The rejected files are kept as "
                f"{', '.join(p.name for p in bad)}. Set resume=false to start over, or ckpt_path=<a good file>.")
    if ckpt_path:
        path = Path(ckpt_path).expanduser()
        if not path.exists():
            from illustrious.errors import MissingPathError

            raise MissingPathError(f"ckpt_path={ckpt_path} does not exist: give a checkpoint a run wrote "
                                   "(<output_dir>/checkpoints/*.safetensors), or leave ckpt_path unset.")
        log.info("Starting from ckpt_path=%s", path)
        return path, read_verified(path, allow_pickle)
    return None
