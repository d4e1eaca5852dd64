"""What was skipped and why: counts per problem and every path, as JSON next to the manifest and in the log.

Problems (each skips what it names and nothing else):
  unreadable_image     not an image Pillow can open: zero bytes, corrupt header, unknown format, no permission
  decompression_bomb   the header claims more pixels than data.bomb_megapixels
  decode_failed        the header was fine but the pixels are not (truncated, corrupt data); found in training
  caption_undecodable  the .txt is not UTF-8 text (the image keeps its other caption, if any)
  json_broken          the .json is not a JSON object (the image keeps its .txt caption, if any)
  sidecar_unreadable   a sidecar could not be read (I/O error, permission)
  missing_caption      no usable caption at all (with data.require_caption=true the image is skipped)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from illustrious.utils.files import atomic_write_json

log = logging.getLogger(__name__)

# Problems that take an image out of training (the others only lose a sidecar).
SKIPS_IMAGE = {"unreadable_image", "decompression_bomb", "decode_failed", "missing_caption"}


class ProblemReport:
    """Problem -> [(path, detail)], in the order found."""

    def __init__(self, problems: dict[str, list[tuple[str, str]]] | None = None):
        self.problems: dict[str, list[tuple[str, str]]] = {k: list(map(tuple, v)) for k, v in (problems or {}).items()}

    def add(self, reason: str, path: str, detail: str = "") -> None:
        self.problems.setdefault(reason, []).append((path, detail))

    def extend(self, items: Iterable[tuple[str, str, str]]) -> None:
        for reason, path, detail in items:
            self.add(reason, path, detail)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.problems.items())}

    def paths(self, reason: str) -> list[str]:
        return [p for p, _ in self.problems.get(reason, [])]

    def __len__(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def summary(self) -> str:
        if not self.problems:
            return "no problems"
        return ", ".join(f"{n} {reason}" for reason, n in self.counts().items())

    def to_json(self, **extra) -> dict:
        return {**extra, "counts": self.counts(),
                "problems": {k: [{"path": p, "detail": d} for p, d in v] for k, v in sorted(self.problems.items())}}

    def write(self, path: Path, **extra) -> None:
        atomic_write_json(path, self.to_json(**extra))

    @staticmethod
    def read(path: Path) -> ProblemReport:
        data = json.loads(Path(path).read_text())
        return ProblemReport({k: [(e["path"], e["detail"]) for e in v] for k, v in data.get("problems", {}).items()})

