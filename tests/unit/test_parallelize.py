"""Parallelism without a cluster: unused text-encoder layers frozen (DDP needs no find_unused_parameters), the
backbones' FSDP unit choices, FSDP2 per block on the CPU (one gloo process), the trainer presets, the SLURM
launcher's derived settings and the sweep table."""

from __future__ import annotations

import json

import pytest
import torch

from illustrious.config import instantiate
from illustrious.errors import ConfigError
from illustrious.train import build_module, build_trainer

PROMPTS = ["a red circle on the left", "blue square, top, white background"]


def one_step(module) -> torch.Tensor:
    module.log = lambda *a, **k: None
    batch = {"pixels": torch.rand(2, 3, 32, 32) * 2 - 1, "captions": PROMPTS}
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss


@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_every_trainable_parameter_gets_a_gradient(backbone, make_config):
    cfg = make_config(f"backbone={backbone}")
    bb = instantiate(cfg.backbone)
    with torch.no_grad():
        before = bb.encode_text(PROMPTS)
    module = build_module(cfg, bb)  # freezes the unused layers
    with torch.no_grad():
        after = bb.encode_text(PROMPTS)
    for name in ("tokens", "mask", "pooled"):  # freezing changes no output
        a, b = getattr(before, name), getattr(after, name)
        assert (a is None and b is None) or torch.equal(a, b)
    one_step(module)
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = {n for n, p in module.backbone.text_encoders.named_parameters() if not p.requires_grad}
    assert frozen  # the layers after the hidden state taken
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in optimized for n, p in module.backbone.text_encoders.named_parameters() if n in frozen)


def test_frozen_layers_are_exactly_those_after_the_penultimate_state(make_config):
    module = build_module(cfg := make_config("backbone=sdxl_tiny"), instantiate(cfg.backbone))
    frozen = sorted({n.rsplit(".", 1)[0] for n, p in module.backbone.text_encoders.named_parameters()
                     if not p.requires_grad})
    last = module.backbone.text_encoders["clip_l"].model.config.num_hidden_layers - 1
    # CLIP-L: its last layer and final norm; bigG's pooled, projected output uses both, so nothing of it is frozen
    assert all(n.startswith("clip_l.") for n in frozen)
    assert {n.split(".")[2] for n in frozen} == {"encoder", "final_layer_norm"}
    assert {n.split(".")[4] for n in frozen if ".encoder.layers." in n} == {str(last)}

    lumina = build_module(cfg := make_config("backbone=lumina_tiny"), instantiate(cfg.backbone))
    frozen = {n for n, p in lumina.backbone.text_encoders.named_parameters() if not p.requires_grad}
    last = lumina.backbone.text_encoders["gemma"].model.config.num_hidden_layers - 1
    assert {n.split(".")[2] if ".layers." not in n else f"layers.{n.split('.')[3]}" for n in frozen} == {
        "norm", f"layers.{last}"}


def test_wrap_and_checkpoint_units(make_config):
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_lumina2 import Lumina2TransformerBlock
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer

    from illustrious.backbones.parallel import BackboneUnits, unit_modules

    sdxl = build_module(cfg := make_config("backbone=sdxl_tiny"), instantiate(cfg.backbone))
    wrap = unit_modules(sdxl, "wrap")
    kinds = {cls: sum(isinstance(m, cls) for m in wrap) for cls in (BasicTransformerBlock, ResnetBlock2D, CLIPEncoderLayer)}
    unet = sdxl.backbone.denoiser
    assert kinds[BasicTransformerBlock] == sum(isinstance(m, BasicTransformerBlock) for m in unet.modules()) > 0
    assert kinds[ResnetBlock2D] == sum(isinstance(m, ResnetBlock2D) for m in unet.modules()) > 0
    assert kinds[CLIPEncoderLayer] == 6  # both tiny CLIPs' 3 layers
    assert len(wrap) == sum(kinds.values())
    checkpointed = unit_modules(sdxl, "checkpoint")
    assert checkpointed and not any(isinstance(m, CLIPEncoderLayer) for m in checkpointed)
    # the FSDP1 policy (trainer=fsdp) picks the same modules from the LightningModule root
    assert list(BackboneUnits("wrap")._run_policy(sdxl, set(), {})) == wrap

    lumina = build_module(cfg := make_config("backbone=lumina_tiny"), instantiate(cfg.backbone))
    dit = lumina.backbone.denoiser
    wrap = unit_modules(lumina, "wrap")
    n_blocks = len(dit.noise_refiner) + len(dit.context_refiner) + len(dit.layers)
    assert sum(isinstance(m, Lumina2TransformerBlock) for m in wrap) == n_blocks
    assert sum(isinstance(m, Gemma2DecoderLayer) for m in wrap) == 2
    assert all(isinstance(m, Lumina2TransformerBlock) for m in unit_modules(lumina, "checkpoint"))


@pytest.fixture
def gloo_world_of_one(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    # Rendezvous through a file: a MASTER_PORT set here would leak into later tests' two-process runs.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


@pytest.mark.parametrize("backbone", ["sdxl_tiny", "lumina_tiny"])
def test_fsdp2_shards_per_block_and_trains_on_the_cpu(backbone, make_config, gloo_world_of_one):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from illustrious.backbones.parallel import apply_fsdp2, unit_modules

    cfg = make_config(f"backbone={backbone}")
    module = build_module(cfg, instantiate(cfg.backbone))
    with torch.no_grad():
        reference = module.backbone.encode_text(PROMPTS)
    units = unit_modules(module, "wrap")
    sharded = apply_fsdp2(module.backbone, gloo_world_of_one, activation_checkpointing=True)
    assert sharded[: len(units)] == units and module.backbone.denoiser in sharded
    assert all(isinstance(m, FSDPModule) for m in sharded)
    for name, p in module.backbone.named_parameters():  # everything but the frozen autoencoder is sharded
        assert isinstance(p, DTensor) == (not name.startswith("autoencoder.")), name
    with torch.no_grad():  # the text encoders' hidden states survive sharding
        torch.testing.assert_close(module.backbone.encode_text(PROMPTS).tokens, reference.tokens)
    torch.manual_seed(0)
    loss = one_step(module)
    assert torch.isfinite(loss)
    assert [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("preset", ["cpu", "default", "ddp"])
def test_cpu_presets_build_a_trainer(preset, make_config):
    cfg = make_config(f"trainer={preset}", "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2",
                      "trainer.accelerator=cpu")
    trainer = build_trainer(cfg)
    assert trainer.accumulate_grad_batches == 2 and trainer.precision == "bf16-mixed"
    if preset == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy"
        assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is False


def test_fsdp_presets_configure_lightnings_strategies(make_config):
    from lightning.pytorch.strategies import FSDPStrategy

    from illustrious.strategies import FSDP2Strategy

    cfg = make_config("trainer=fsdp", "trainer.strategy.sharding_strategy=SHARD_GRAD_OP")
    strategy = instantiate(cfg.trainer.strategy, _convert_="all")
    assert isinstance(strategy, FSDPStrategy) and strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert repr(strategy.kwargs["auto_wrap_policy"]) == "BackboneUnits('wrap')"
    cfg = make_config("trainer=fsdp", "trainer.strategy.sharding_strategy=HYBRID_SHARD", "trainer.strategy.device_mesh=[2,4]")
    hybrid = instantiate(cfg.trainer.strategy, _convert_="all")
    assert hybrid.sharding_strategy.name == "HYBRID_SHARD" and hybrid.kwargs["device_mesh"] == (2, 4)
    with pytest.raises(ConfigError, match="device_mesh"):
        instantiate(make_config("trainer=fsdp", "trainer.strategy.sharding_strategy=HYBRID_SHARD").trainer.strategy)
    strategy = instantiate(make_config("trainer=fsdp2").trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and strategy.fsdp2_options["activation_checkpointing"] is True


@pytest.mark.parametrize("preset", ["deepspeed_zero2", "deepspeed_zero3", "deepspeed_offload"])
def test_deepspeed_presets_say_how_to_install_it(preset, make_config):
    pytest.importorskip("lightning")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed; tests/gpu covers it")
    with pytest.raises(ConfigError, match="pip install deepspeed"):
        build_trainer(make_config(f"trainer={preset}"))


def test_slurm_launcher_takes_tasks_and_gpus_from_the_trainer(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from illustrious.config import CONF_DIR

    def launcher(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", *overrides],
                          return_hydra_config=True)
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)

    gpu = launcher("trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=8", "trainer.num_nodes=2")
    assert (gpu["nodes"], gpu["tasks_per_node"], gpu["gpus_per_node"]) == (2, 8, 8)
    assert gpu["signal_delay_s"] > 0 and gpu["max_num_timeout"] > 0  # requeued on time-out / preemption
    cpu = launcher("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cpu["nodes"], cpu["tasks_per_node"], cpu["gpus_per_node"]) == (1, 2, None)
    assert launcher()["tasks_per_node"] == 1  # devices=auto: one task
    GlobalHydra.instance().clear()


def test_gather_makes_one_table_of_a_sweep(tmp_path, capsys):
    from illustrious.gather import main

    for job, (objective, loss) in enumerate([("eps", 0.5), ("flow", 0.25), ("vpred", None)]):
        d = tmp_path / str(job) / ".hydra"
        d.mkdir(parents=True)
        (d / "overrides.yaml").write_text(f"- objective={objective}\n- trainer.max_steps=2\n")
        if loss is not None:
            (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"train/loss": loss, "global_step": 2}))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "| job | objective | status | global_step | train/loss |"
    assert "| 1 | flow | done | 2 | 0.25 |" in out.out and "| 2 | vpred | unfinished |  |  |" in out.out
    assert "3 jobs, 1 unfinished" in out.err
    assert (tmp_path / "summary.csv").read_text().splitlines()[1] == "0,eps,done,2,0.5"
    assert main([str(tmp_path / "missing")]) == 2
