"""The command line as users run it, in subprocesses."""

import json
import sys

import pytest

from tests.conftest import FAST, REPO, run_cli


def test_cli_trains_a_pair(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("backbone=lumina_tiny", "objective=flow", "trainer.max_steps=2", *FAST[1:],
                   f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert (out / "checkpoints" / "last.safetensors").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "Judged 4 held-out prompts" in proc.stdout + proc.stderr  # the judge ran and printed its figures


def test_local_multirun_sweeps_objectives(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "objective=eps,vpred,flow", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in range(3):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["global_step"] == 2
    objectives = {(sweep / str(j) / ".hydra" / "overrides.yaml").read_text().split("objective=")[1].split()[0]
                  for j in range(3)}
    assert objectives == {"eps", "vpred", "flow"}


def test_wrong_group_option_lists_choices(tmp_path):
    proc = run_cli("backbone=sdxl_huge", cwd=tmp_path)
    assert proc.returncode != 0
    for choice in ("sdxl", "sdxl_tiny", "lumina", "lumina_tiny"):
        assert choice in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()  # stopped before any work


def test_unknown_key_lists_valid_keys(tmp_path):
    proc = run_cli("trainer.max_stepz=5", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Did you mean trainer.max_steps?" in proc.stderr and "Traceback" not in proc.stderr
    assert "accumulate_grad_batches" in proc.stderr  # the valid keys are listed
    proc = run_cli("optim.lrr=1", "backbone=sdxl_tiny", cwd=tmp_path)
    assert "Did you mean optim.lr?" in proc.stderr


def test_help_lists_groups(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("backbone:", "objective:", "data:", "optim:", "trainer:", "callbacks:", "logger:"):
        assert group in proc.stdout


def test_cfg_job_prints_config_without_importing_torch(tmp_path):
    import subprocess

    code = ("import sys; sys.argv=['run', '--cfg', 'job', 'trainer.max_steps=7'];"
            "from illustrious.run import entry\n"
            "try: entry()\nexcept SystemExit: pass\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "max_steps: 7" in proc.stdout
    assert "TORCH_NOT_IMPORTED" in proc.stdout


def test_experiment_recipe_composes(tmp_path):
    proc = run_cli("+experiment=shapes_default", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (REPO / "illustrious" / "conf" / "experiment" / "shapes_default.yaml").is_file()
    # the recipe writes out the default run: both compose to the same job config
    assert proc.stdout == run_cli("--cfg", "job", cwd=tmp_path).stdout
    # the default run is lumina_tiny + flow, without a system prompt; the Lumina recipe is the same run
    assert "LuminaBackbone" in proc.stdout and "system_prompt: ''" in proc.stdout and "FlowObjective" in proc.stdout
    lumina = run_cli("+experiment=shapes_lumina", "--cfg", "job", cwd=tmp_path)
    assert lumina.returncode == 0, lumina.stderr
    assert lumina.stdout == proc.stdout
    # the SDXL recipe is the default run on sdxl_tiny with 32-token prompts
    sdxl = run_cli("+experiment=shapes_sdxl", "--cfg", "job", cwd=tmp_path)
    assert sdxl.returncode == 0, sdxl.stderr
    assert sdxl.stdout == run_cli("backbone=sdxl_tiny", "backbone.tokenizer_max_length=32", "--cfg", "job",
                                  cwd=tmp_path).stdout


@pytest.mark.parametrize(("overrides", "tail", "cfg_trunc"), [
    ([], 0.5, 0.25),                                     # the default run: its recipe applies
    (["sampling.cfg_trunc_ratio=0.6"], 0.5, 0.6),        # the command line wins over the recipe
    (["objective=eps"], 0.0, 1.0),                       # any other combination: config.yaml's own values
    (["backbone=sdxl_tiny"], 0.0, 1.0),
    (["+experiment=shapes_long"], 0.0, 1.0),             # an experiment wins over the recipe
])
def test_the_default_runs_recipe_applies_to_its_combination_only(overrides, tail, cfg_trunc, tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config(overrides, tmp_path)
    assert cfg.objective.timesteps.tail_fraction == tail
    # the recipe sets a key that config.yaml itself holds, so it has to come after _self_ in the defaults list
    assert cfg.sampling.cfg_trunc_ratio == cfg_trunc




def run_command(module: str, *args: str, cwd, full_error: bool = False):
    import os
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1" if full_error else "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("module", "args", "message"), [
    ("illustrious.run", ["optim.lr=abc"], "optim.lr='abc': needs a number (float) >= 0, e.g. optim.lr=1e-4"),
    ("illustrious.run", ["backbone=lumina", "trainer.enable_progress_bar=false"],
     "backbone=lumina needs pretrained weights: set backbone.weights=/path/to/Lumina-Image-2.0"),
    ("illustrious.sample", ["checkpoint=missing.safetensors", "prompt=a red circle"],
     "checkpoint='missing.safetensors' does not exist: give a training checkpoint"),
    ("illustrious.cache_latents", ["data.root=/nowhere", "batch_size=0"],
     "batch_size=0: needs a whole number (int) >= 1, e.g. batch_size=16"),
    ("illustrious.make_shards", ["data.root=/nowhere"], "Set out=/path/to/shards"),
    # paths and sizes found wrong before the first step, after the config has composed
    ("illustrious.run", ["data=folder", "data.root=/nowhere"],
     "data.root=/nowhere does not exist. Point it at your image folder."),
    ("illustrious.run", ["data=webdataset", "data.urls=/nowhere/shard-000000.tar"],
     "1 of 1 shards of data.urls do not exist, e.g. /nowhere/shard-000000.tar."),
    ("illustrious.run", ["ckpt_path=missing.safetensors"], "ckpt_path=missing.safetensors does not exist"),
    ("illustrious.run", ["ckpt_path=not_a_checkpoint.safetensors"],
     "not_a_checkpoint.safetensors is truncated or not a safetensors file"),
    ("illustrious.run", ["ckpt_path=trusted.ckpt"], "trusted.ckpt is a pickle file (.ckpt). Reading a pickle can run"),
    ("illustrious.sample", ["checkpoint=not_a_checkpoint.safetensors", "prompt=a red circle"],
     "not_a_checkpoint.safetensors is truncated or not a safetensors file"),
    ("illustrious.export", ["checkpoint=missing.safetensors", "format=diffusers"],
     "checkpoint='missing.safetensors' does not exist: give a training checkpoint"),
    ("illustrious.export", ["checkpoint=sharded", "format=diffusers"],
     "checkpoint='sharded' is a folder, not a checkpoint file; if it is an FSDP run's sharded checkpoint, make one "
     "file of it first: python -m illustrious.consolidate sharded <file.safetensors> --allow-pickle"),
    ("illustrious.run", ["backbone.transformer.hidden_size=abc"],
     "backbone.transformer.hidden_size='abc': needs a whole number (int) like the architecture's own"),
    ("illustrious.run", ["data.width=30"],
     "data.height=32 and data.width=30 must be multiples of 4 for this backbone, e.g. data.height=32 data.width=28."),
])
def test_config_errors_print_one_message_without_a_trace(module, args, message, tmp_path):
    (tmp_path / "not_a_checkpoint.safetensors").write_bytes(b"\xff" * 1000)  # an absurd header length
    (tmp_path / "trusted.ckpt").write_bytes(b"\x80\x04N.")  # a pickle of None: refused unread
    (tmp_path / "sharded").mkdir()  # where an FSDP run's checkpoint folder would be
    proc = run_command(module, *args, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Configuration error: {message}") or f"\nConfiguration error: {message}" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.rstrip().endswith("(HYDRA_FULL_ERROR=1 shows the full stack trace.)")


def test_full_trace_with_hydra_full_error(tmp_path):
    proc = run_command("illustrious.run", "optim.lr=abc", cwd=tmp_path, full_error=True)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "illustrious.errors.ConfigError: optim.lr='abc': needs a number (float) >= 0" in proc.stderr


def test_composition_errors_have_no_trace(tmp_path):
    proc = run_command("illustrious.sample", "stepz=3", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Could not override 'stepz'." in proc.stderr and "Traceback" not in proc.stderr


def write_user_configs(folder):
    """A user's own config folder: a backbone variant and a recipe that selects it."""
    (folder / "backbone").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "backbone" / "my_model.yaml").write_text(
        "defaults:\n  - sdxl_tiny\n  - _self_\ntokenizer_max_length: 16\n")
    (folder / "experiment" / "my_recipe.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /backbone: my_model\ntrainer:\n  max_steps: 2\n"
        "optim:\n  lr: 1e-3\n")
    # a recipe over shipped options only: its checkpoints can be sampled (a checkpoint's stored choices are
    # rebuilt from the package's own config groups, so one trained with backbone=my_model cannot be yet)
    (folder / "experiment" / "my_quick.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /backbone: sdxl_tiny\nbackbone:\n  tokenizer_max_length: 16\n"
        "trainer:\n  max_steps: 2\n")
    return folder


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_user_config_folder_adds_groups_and_recipes(how, tmp_path):
    import yaml

    user = write_user_configs(tmp_path / "my_conf")
    where = ["--config-dir", str(user)] if how == "--config-dir" else [f"hydra.searchpath=[file://{user}]"]
    proc = run_cli(*where, "+experiment=my_recipe", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["backbone"]["tokenizer_max_length"] == 16  # the user's backbone, on top of the shipped sdxl_tiny
    assert cfg["backbone"]["_target_"] == "illustrious.backbones.sdxl.SDXLBackbone.from_config"
    assert (cfg["trainer"]["max_steps"], cfg["optim"]["lr"]) == (2, 1e-3)
    # the unknown-key hint knows the user's groups too
    proc = run_cli(*where, "backbone=my_model", "trainer.max_stepz=3", cwd=tmp_path)
    assert "Did you mean trainer.max_steps?" in proc.stderr


def test_user_config_folder_in_a_notebook(tmp_path):
    from tests.conftest import compose_config

    user = write_user_configs(tmp_path / "my_conf")
    cfg = compose_config([f"hydra.searchpath=[file://{user}]", "+experiment=my_recipe"], tmp_path)
    assert (cfg.backbone.tokenizer_max_length, cfg.trainer.max_steps) == (16, 2)


COMMAND_CONFIGS = sorted(p.stem for p in (REPO / "illustrious" / "conf").glob("*.yaml") if p.stem != "config")


def test_every_command_config_is_listed():
    assert {"annotate", "inspect_captions", "sample", "evaluate", "export"} <= set(COMMAND_CONFIGS)


@pytest.mark.parametrize("command", COMMAND_CONFIGS)
def test_every_command_config_composes(command, tmp_path):
    # a defaults list Hydra refuses (an override before a group, say) breaks the command on every call
    proc = run_command(f"illustrious.{command}", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout.strip()
