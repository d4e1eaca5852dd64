"""StepLog: one JSON line per training step (step, epoch, batch, loss, learning rate) in `steps.jsonl`.

Flushed line by line, so a killed run keeps what it logged. A resumed run first drops the lines of the
steps after its checkpoint (they are run again), so the file always reads as one run, step by step, which
is what the resume tests compare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StepLog(Callback):
    def __init__(self, path: str):
        self.path = Path(path)
        self._file = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep only the steps the (possibly resumed) state already includes
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _complete(line) and json.loads(line)["step"] <= trainer.global_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 (open for the whole run)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._file is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch": batch_idx,
                  "loss": None if loss is None else float(loss)}
        if trainer.optimizers:
            record["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _complete(line: str) -> bool:
    try:
        return "step" in json.loads(line)
    except ValueError:
        return False  # a line cut off by a kill


def read_steps(path: str | Path) -> dict[int, dict]:
    """step -> its record (the last one written for each step)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip() and _complete(line)]
    return {r["step"]: r for r in records}
