"""conf/evaluate.yaml and its validation table agree: the shipped defaults pass, every table key exists, and
each metric name the config can ask for is in the registry."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from illustrious.config import CONF_DIR
from illustrious.errors import ConfigError
from illustrious.eval.metrics.selection import METRICS, flatten
from illustrious.evaluate import default_labels, folder_name
from illustrious.validation import EVALUATE, check_settings


def evaluate_conf(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def test_defaults_validate_and_every_table_key_exists():
    cfg = evaluate_conf("checkpoints=[a.safetensors]", "prompts=p.txt")
    check_settings(cfg, EVALUATE)
    for key in EVALUATE:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert set(cfg.metrics) <= set(METRICS)


def test_bad_values_are_listed_at_once():
    with pytest.raises(ConfigError) as error:
        check_settings(evaluate_conf("checkpoints=[a]", "prompts=p.txt", "kid_subset_size=1", "grid_cell=2",
                                     "ccip.image_size=0"), EVALUATE)
    assert str(error.value).splitlines()[1:] == [
        "  grid_cell=2: needs a whole number (int) >= 16, e.g. grid_cell=128",
        "  kid_subset_size=1: needs a whole number (int) >= 2, e.g. kid_subset_size=50",
        "  ccip.image_size=0: needs a whole number (int) >= 8 (or null), e.g. ccip.image_size=384"]
    with pytest.raises(ConfigError, match="prompts is required"):
        check_settings(evaluate_conf("checkpoints=[a]"), EVALUATE)


def test_labels_and_table_columns():
    assert default_labels(["runs/a/checkpoints/last.safetensors", "runs/b/checkpoints/last.safetensors"]) == [
        "a/checkpoints/last", "b/checkpoints/last"]
    assert default_labels(["x/eps.safetensors", "y/flow.safetensors"]) == ["eps", "flow"]
    with pytest.raises(ConfigError, match="listed twice"):
        default_labels(["a.safetensors", "a.safetensors"])
    assert folder_name(3, "a/checkpoints/last") == "03-a_checkpoints_last"
    import torch

    assert flatten("kid", (torch.tensor(0.5), torch.tensor(0.1))) == {"kid": 0.5, "kid_std": pytest.approx(0.1)}
    assert flatten("ccip", {"red/images": torch.tensor(2)}) == {"ccip/red/images": 2}
