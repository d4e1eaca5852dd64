"""Two DDP ranks on the CPU (gloo): Lightning keeps the bucket sampler (no second sharding), the ranks get
disjoint, equal shares of every epoch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from tests.unit.test_data_folder import SMALL, make_image_folder

SCRIPT = textwrap.dedent("""
    import json, sys
    import lightning as L
    import torch
    from illustrious.data.sources.folder_datamodule import FolderDataModule

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append([self.current_epoch, list(batch["path"]), list(batch["pixels"].shape)])
            return (batch["pixels"].mean() * self.weight).sum()

        def on_train_end(self):
            sampler = self.trainer.train_dataloader.sampler
            with open(f"{sys.argv[2]}/rank{self.global_rank}.json", "w") as f:
                json.dump({"seen": self.seen, "sampler": type(sampler).__name__,
                           "world": sampler.num_replicas, "rank": sampler.rank}, f)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    if __name__ == "__main__":
        dm = FolderDataModule.from_config(root=sys.argv[1], batch_size=2, num_workers=0, bucket_multiple=8, **json.loads(sys.argv[3]))
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            use_distributed_sampler=True, default_root_dir=sys.argv[2])
        trainer.fit(Probe(), datamodule=dm)
""")


@pytest.mark.slow
def test_two_ranks_share_each_epoch_without_overlap(tmp_path):
    make_image_folder(tmp_path / "data", n_good=6)
    (tmp_path / "data" / "broken" / "truncated.jpg").unlink()  # its replacement would repeat a sample
    (tmp_path / "probe.py").write_text(SCRIPT)
    settings = {**SMALL, "bucket_megapixels": list(SMALL["bucket_megapixels"]), "drop_last": True}
    for _ in range(3):  # another test's processes may take the free port Lightning picked (EADDRINUSE): retry
        proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "data"), str(tmp_path),
                               json.dumps(settings)], cwd=REPO, capture_output=True, text=True, timeout=600)
        if "EADDRINUSE" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["sampler"], r["world"], r["rank"]) for r in ranks] == [("BucketBatchSampler", 2, 0),
                                                                      ("BucketBatchSampler", 2, 1)]
    for epoch in range(2):
        per_rank = [[paths for e, paths, _ in r["seen"] if e == epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) > 0  # equal shares: DDP never waits on a rank
        flat = [p for batches in per_rank for batch in batches for p in batch]
        assert len(flat) == len(set(flat))  # disjoint (drop_last=true: no padding repeats)
    shapes = {tuple(shape) for r in ranks for _, _, shape in r["seen"]}
    assert len(shapes) > 1  # several buckets were used
