"""The command line as users run it, in subprocesses."""

import json
import sys

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
    assert "Composition accuracy" in proc.stdout + proc.stderr


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
    assert not (tmp_path / "outputs").exists()  # stopped before any work


def test_unknown_key_lists_valid_keys(tmp_path):
    proc = run_cli("trainer.max_stepz=5", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Did you mean trainer.max_steps?" in proc.stderr
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
