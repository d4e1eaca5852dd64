"""Two real processes (gloo): each metric updated with half the images on each rank computes, after its
automatic sync, the same figures as one process over all the images."""

import json
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from illustrious.data.sources.shapes import draw, random_layout


def batch():
    rng = random.Random(7)
    layouts = [random_layout(rng) for _ in range(6)]
    images = torch.from_numpy(np.stack([np.asarray(draw(lay, 32, 32, random.Random(i)))
                                        for i, lay in enumerate(layouts)])).permute(0, 3, 1, 2).contiguous()
    images[1] //= 5  # the darkest image sits on rank 0, the brightest (below) on rank 1
    images[4] = 255 - (255 - images[4]) // 5
    return images, [lay.sentence() for lay in layouts]


def figures(metrics, images, prompts):
    out = {}
    for name, metric in metrics.items():
        metric.update(images, prompts) if name == "shapes" else metric.update(images)
        out.update({f"{name}/{k}": float(v) for k, v in metric.compute().items()})
    return out


def new_metrics():
    from illustrious.eval.metrics import ColourStatistics, Luminance, ShapesJudge

    return {"shapes": ShapesJudge(), "luminance": Luminance(), "colour": ColourStatistics()}


def worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        images, prompts = batch()
        half = slice(0, 3) if rank == 0 else slice(3, 6)
        result = figures(new_metrics(), images[half], prompts[half])
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch: seconds on idle cores, minutes on a loaded machine
def test_metrics_sync_across_two_processes(tmp_path):
    out = tmp_path / "synced.json"
    mp.spawn(worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    synced = json.loads(out.read_text())
    images, prompts = batch()
    alone = figures(new_metrics(), images, prompts)
    assert synced.keys() == alone.keys()
    for key, value in alone.items():
        assert synced[key] == value or abs(synced[key] - value) <= 1e-9 * max(1.0, abs(value)), key
