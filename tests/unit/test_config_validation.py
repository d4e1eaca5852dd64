"""Every typed setting is checked before any work starts, with a message naming the key, its type and an example."""

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from illustrious.config import CONF_DIR, validate
from illustrious.errors import ConfigError
from illustrious.validation import CACHE_LATENTS, MAKE_SHARDS, RUN, SAMPLE, check_settings


def compose_conf(name="config", *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def problem(*overrides) -> str:
    with pytest.raises(ConfigError) as error:
        validate(compose_conf("config", *overrides))
    return str(error.value)


def test_the_three_reported_cases():
    assert problem("optim.lr=abc") == "optim.lr='abc': needs a number (float) >= 0, e.g. optim.lr=1e-4"
    from illustrious.sampling.samplers import SAMPLERS

    assert sorted(SAMPLERS) == ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "euler", "euler_ancestral"]  # the message lists the sampling module's registry
    assert problem("sampling.sampler=bogus") == (
        "sampling.sampler='bogus': needs one of ddim, dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral, e.g. sampling.sampler=euler")
    # num_training_steps copies trainer.max_steps by interpolation: reported once, at its source
    assert problem("trainer.max_steps=1.5") == (
        "trainer.max_steps=1.5: needs a whole number (int) >= 1 (or -1), e.g. trainer.max_steps=600")


@pytest.mark.parametrize(("override", "message"), [
    ("seed=abc", "seed='abc': needs a whole number (int), e.g. seed=0"),
    ("trainer.max_steps=0", "trainer.max_steps=0: needs a whole number (int) >= 1 (or -1), e.g. trainer.max_steps=600"),
    ("trainer.max_steps=true", "trainer.max_steps=True: needs a whole number (int) >= 1 (or -1), e.g. trainer.max_steps=600"),
    ("trainer.accumulate_grad_batches=0",
     "trainer.accumulate_grad_batches=0: needs a whole number (int) >= 1, e.g. trainer.accumulate_grad_batches=4"),
    ("optim.lr=-1", "optim.lr=-1: needs a number (float) >= 0, e.g. optim.lr=1e-4"),
    ("optim.text_encoder_lr=fast",
     "optim.text_encoder_lr='fast': needs a number (float) >= 0 (or null), e.g. optim.text_encoder_lr=1e-5"),
    ("optim.optimizer.betas=[0.9]",
     "optim.optimizer.betas=[0.9]: needs a list of 2 numbers >= 0 and <= 1, e.g. optim.optimizer.betas=[0.9,0.999]"),
    ("sampling.steps=0", "sampling.steps=0: needs a whole number (int) >= 1, e.g. sampling.steps=20"),
    ("sampling.guidance_scale=high",
     "sampling.guidance_scale='high': needs a number (float) >= 0, e.g. sampling.guidance_scale=4.0"),
    ("sampling.guidance_rescale=1.5",
     "sampling.guidance_rescale=1.5: needs a number (float) >= 0 and <= 1, e.g. sampling.guidance_rescale=0.7"),
    ("data.batch_size=0", "data.batch_size=0: needs a whole number (int) >= 1, e.g. data.batch_size=8"),
    ("data.width=32.5", "data.width=32.5: needs a whole number (int) >= 1, e.g. data.width=32"),
    ("captions.dropout=2", "captions.dropout=2: needs a number (float) >= 0 and <= 1, e.g. captions.dropout=0.1"),
    ("callbacks.checkpoint.every_n_train_steps=null",  # RunCheckpoint needs a number: 0 is "final step and signals"
     "callbacks.checkpoint.every_n_train_steps=null: needs a whole number (int) >= 0, e.g. "
     "callbacks.checkpoint.every_n_train_steps=200"),
    ("trainer.enable_progress_bar=maybe",
     "trainer.enable_progress_bar='maybe': needs true or false (or null), e.g. trainer.enable_progress_bar=true"),
])
def test_each_typed_setting_names_key_type_and_example(override, message):
    assert problem(override) == message


def test_precision_comes_from_lightnings_list():
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR

    text = problem("trainer.precision=bf17")
    assert text.startswith("trainer.precision='bf17': needs one of ")
    assert text.endswith(", e.g. trainer.precision=bf16-mixed")
    assert all(p in text for p in get_args(_PRECISION_INPUT_STR))


def test_all_problems_are_listed_at_once():
    assert problem("optim.lr=abc", "data.batch_size=0", "sampling.sampler=bogus") == (
        "These settings are not valid:\n"
        "  data.batch_size=0: needs a whole number (int) >= 1, e.g. data.batch_size=8\n"
        "  sampling.sampler='bogus': needs one of ddim, dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral, e.g. sampling.sampler=euler\n"
        "  optim.lr='abc': needs a number (float) >= 0, e.g. optim.lr=1e-4")


def test_rules_relating_keys():
    assert problem("trainer.max_steps=-1") == (
        "trainer.max_steps=-1: set a positive number of steps, e.g. trainer.max_steps=600 (or trainer.max_epochs).")
    assert problem("optim.lr=0", "optim.text_encoder_lr=0").startswith(
        "optim.lr and optim.text_encoder_lr are both 0: nothing would train.")
    assert problem("objective.timesteps.t_min=0.5", "objective.timesteps.t_max=0.5") == (
        "objective.timesteps.t_min=0.5 must be below objective.timesteps.t_max=0.5.")


def test_valid_values_pass():
    validate(compose_conf("config", "trainer.max_steps=-1", "trainer.max_epochs=2", "optim.lr=0",
                          "optim.text_encoder_lr=1e-5", "trainer.precision=bf16-mixed", "sampling.shift=3",
                          "trainer.gradient_clip_val=null", "optim.lr=1", "callbacks.checkpoint.every_n_train_steps=0"))


GROUP_OPTIONS = [f"{group.name}={option.stem}" for group in sorted(CONF_DIR.iterdir())
                 if group.is_dir() and group.name not in ("hydra", "experiment")
                 for option in sorted(group.glob("*.yaml"))]
NESTED_OPTIONS = [f"objective/{sub.name}={option.stem}" for sub in sorted((CONF_DIR / "objective").iterdir())
                  if sub.is_dir() for option in sorted(sub.glob("*.yaml"))]


def has_key(cfg, key) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    return isinstance(parent, DictConfig) and leaf in parent.keys()


def test_every_shipped_option_and_recipe_validates_and_every_table_key_exists():
    """The tables accept every default we ship, and each key they check is a real key of some config (a typo
    in the table would otherwise silently check nothing)."""
    configs = [compose_conf("config", option) for option in GROUP_OPTIONS + NESTED_OPTIONS]
    configs += [compose_conf("config", f"+experiment={r.stem}") for r in sorted((CONF_DIR / "experiment").glob("*.yaml"))]
    assert len(configs) > 15
    seen = set()
    for cfg in configs:
        validate(cfg)
        seen |= {key for key in RUN if has_key(cfg, key)}
    assert set(RUN) - seen == set()
    for name, table, overrides in (("sample", SAMPLE, ["checkpoint=x.safetensors", "prompt=a"]),
                                   ("cache_latents", CACHE_LATENTS, []), ("make_shards", MAKE_SHARDS, [])):
        cfg = compose_conf(name, *overrides)
        check_settings(cfg, table)
        own = set(table) - set(RUN) if name != "sample" else set(table)
        assert {key for key in own if not has_key(cfg, key)} == set(), name


def test_required_and_other_commands():
    with pytest.raises(ConfigError) as error:
        check_settings(compose_conf("sample", "prompt=a"), SAMPLE)
    assert str(error.value) == ("checkpoint is required: a string, e.g. "
                                "checkpoint=outputs/run/checkpoints/last.safetensors")
    with pytest.raises(ConfigError) as error:
        check_settings(compose_conf("sample", "checkpoint=x", "width=0", "steps=-2", "num_images=0"), SAMPLE)
    assert str(error.value).splitlines()[1:] == [
        "  steps=-2: needs a whole number (int) >= 1 (or null), e.g. steps=28",
        "  width=0: needs a whole number (int) >= 1 (or null), e.g. width=1024",
        "  num_images=0: needs a whole number (int) >= 1, e.g. num_images=4"]
    with pytest.raises(ConfigError, match=re.escape("dtype='float8': needs one of float16, bfloat16, float32")):
        check_settings(compose_conf("cache_latents", "dtype=float8"), CACHE_LATENTS)
    with pytest.raises(ConfigError, match=re.escape("quality=101: needs a whole number (int) >= 1 and <= 100")):
        check_settings(compose_conf("make_shards", "quality=101"), MAKE_SHARDS)


def test_training_stops_before_anything_is_built(make_config, monkeypatch):
    import illustrious.train as train_module

    def built(*args, **kwargs):
        raise AssertionError("the trainer was built before the settings were checked")

    monkeypatch.setattr(train_module, "build_trainer", built)
    with pytest.raises(ConfigError, match=re.escape("optim.lr='abc'")):
        train_module.train(make_config("optim.lr=abc"))
