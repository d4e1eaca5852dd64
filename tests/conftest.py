"""Shared fixtures: compose the real Hydra config with overrides, fast settings for tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Each test process gets its share of the cores: oversubscribed OpenMP threads spin-wait and can make
# CPU training many times slower. Subprocesses (CLI runs, notebook kernels) inherit the same limit.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
os.environ["OMP_NUM_THREADS"] = str(_THREADS)

# Process state that in-process code writes into os.environ (Lightning's DDP setup and torch's env:// init:
# the rendezvous; seed_everything: PL_GLOBAL_SEED) is inherited by every later subprocess: two-process runs of
# different tests then meet on one port and hang until gloo's 30-minute timeout. The session starts without
# it and every test's is dropped when it ends, so every test (and every subprocess it starts) starts clean.
LEAKED_PROCESS_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                      "NODE_RANK", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED")


def drop_leaked_process_env() -> None:
    for name in LEAKED_PROCESS_ENV:
        os.environ.pop(name, None)


drop_leaked_process_env()


@pytest.fixture(autouse=True)
def _no_process_env_left_behind():
    yield
    drop_leaked_process_env()

# Settings that keep a training run to seconds: tiny data, two sampling steps, a few eval samples.
FAST = [
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.batch_size=4",
    "data.length=64",
    "sampling.steps=2",
    "callbacks.samples.num_prompts=2",
    "callbacks.composition.num_samples=4",
    "callbacks.throughput=null",
    "optim.lr_scheduler.num_warmup_steps=1",
]


def compose_config(overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from illustrious.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])


@pytest.fixture
def make_config(tmp_path):
    """make_config(*overrides, fast=True) -> a composed DictConfig writing into tmp_path."""

    def make(*overrides: str, fast: bool = True, output_dir: Path | None = None):
        return compose_config([*(FAST if fast else []), *overrides], output_dir or tmp_path)

    return make


def run_cli(*args: str, cwd: Path, timeout: int = 300):
    """Run `python -m illustrious.run ...` in a subprocess; returns the CompletedProcess."""
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "illustrious.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


class WritesMarker:
    """A pickle payload: unpickling calls Path.write_text(marker) (proves a crafted pickle never runs)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.write_text, (pathlib.Path(self.marker), "pwned")
