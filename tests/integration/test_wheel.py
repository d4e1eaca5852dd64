"""The built wheel, installed into a fresh virtual environment, trains from any directory through its console scripts.

The environment gets the locked dependencies (uv sync of uv.lock, hard-linked from uv's cache) and then the
wheel itself with `--no-deps`, so what runs is the wheel's own files, never this checkout.
"""

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST, REPO
from tests.integration.test_cli import write_user_configs

pytestmark = pytest.mark.slow  # builds, installs and starts five fresh processes: about 1-2 minutes on 2 idle cores

SCRIPTS = ["illustrious-train", "illustrious-sample", "illustrious-cache-latents", "illustrious-make-shards",
           "illustrious-arena", "illustrious-evaluate"]


def run(*args, env=None, cwd=None, timeout=600):
    proc = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (the project is built and installed with uv)")
    root = tmp_path_factory.mktemp("wheel")
    run(uv, "build", "--wheel", "--out-dir", root / "dist", REPO, cwd=REPO)
    (wheel,) = (root / "dist").glob("illustrious-*.whl")
    venv = root / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    run(uv, "sync", "--locked", "--no-dev", "--no-install-project", "--project", REPO,
        env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)}, cwd=REPO)
    run(uv, "pip", "install", "--no-deps", "--python", venv / "bin" / "python", wheel, env=env, cwd=root)
    return wheel, venv, env


def test_wheel_ships_configs_tokenizers_and_architecture_files(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "illustrious"
    data_files = {str(p.relative_to(REPO)) for pattern in ("conf/**/*.yaml", "backbones/**/*.json")
                  for p in package.glob(pattern)}
    assert len(data_files) > 30
    assert data_files - names == set()
    assert {"illustrious/backbones/tokenizers/clip_tiny/tokenizer.json",
            "illustrious/backbones/tokenizers/gemma_tiny/tokenizer.json",
            "illustrious/conf/experiment/shapes_default.yaml"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{script} = " in text for script in SCRIPTS)


def test_installed_wheel_trains_two_steps_from_any_directory(installed, tmp_path):
    _, venv, env = installed
    bin_dir = venv / "bin"
    where = run(bin_dir / "python", "-c", "import illustrious; print(illustrious.__file__)", env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not this checkout
    assert all((bin_dir / script).is_file() for script in SCRIPTS)

    # a user's own config folder adds a backbone and a recipe without touching the package
    user = write_user_configs(tmp_path / "my_conf")
    out = tmp_path / "run"
    composed = run(bin_dir / "illustrious-train", "--config-dir", user, "+experiment=my_recipe", "--cfg", "job",
                   env=env, cwd=tmp_path).stdout
    assert yaml.safe_load(composed)["backbone"]["tokenizer_max_length"] == 16  # the user's backbone option
    train_args = ["--config-dir", user, "+experiment=my_quick", *FAST[1:], "callbacks.composition=null",
                  "callbacks.samples=null", f"hydra.run.dir={out}"]
    run(bin_dir / "illustrious-train", *train_args, env={**env, "HYDRA_FULL_ERROR": "1"}, cwd=tmp_path)
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2
    assert yaml.safe_load((out / ".hydra" / "config.yaml").read_text())["backbone"]["tokenizer_max_length"] == 16
    sources = yaml.safe_load((out / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["config_sources"]
    main_source = next(s["path"] for s in sources if s["provider"] == "main")
    assert Path(main_source.removeprefix("file://")).is_relative_to(venv)  # configs read from the installed package

    samples = tmp_path / "samples"
    run(bin_dir / "illustrious-sample", f"checkpoint={out / 'checkpoints' / 'last.safetensors'}",
        "prompt=a red circle on the left", "steps=2", f"out_dir={samples}", env=env, cwd=tmp_path)
    assert [p.name for p in samples.glob("*.png")] == ["00000-0.png"]
    for script, key in (("illustrious-cache-latents", "shard_size: 1024"), ("illustrious-make-shards", "encoding: original")):
        assert key in run(bin_dir / script, "--cfg", "job", env=env, cwd=tmp_path).stdout
