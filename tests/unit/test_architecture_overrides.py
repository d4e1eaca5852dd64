"""Architecture overrides (backbone.transformer.*, backbone.unet.*, backbone.text_encoder*.*, VAE settings) are
checked against the shipped architecture before a model is built."""

import pytest
import yaml

from illustrious.backbones.architectures import architecture_config, architecture_with
from illustrious.errors import ConfigError
from tests.conftest import REPO

FLAVOURS = {  # config node -> shipped architecture
    ("lumina_tiny", "transformer"): "lumina2_transformer",
    ("lumina_tiny", "text_encoder"): "gemma2_text_encoder",
    ("sdxl_tiny", "unet"): "sdxl_unet",
    ("sdxl_tiny", "text_encoder_1"): "sdxl_text_encoder",
    ("sdxl_tiny", "text_encoder_2"): "sdxl_text_encoder_2",
}


@pytest.mark.parametrize(("flavour", "node"), sorted(FLAVOURS))
def test_every_shipped_tiny_flavour_passes(flavour, node):
    overrides = yaml.safe_load((REPO / "illustrious" / "conf" / "backbone" / f"{flavour}.yaml").read_text())[node]
    merged = architecture_with(FLAVOURS[flavour, node], overrides, f"backbone.{node}")
    assert merged == {**architecture_config(FLAVOURS[flavour, node]), **overrides}


def test_a_value_of_the_wrong_kind_names_the_key_and_an_example():
    with pytest.raises(ConfigError, match=r"^backbone\.transformer\.hidden_size='abc': needs a whole number \(int\) "
                                          r"like the architecture's own, e.g. backbone\.transformer\.hidden_size=2304$"):
        architecture_with("lumina2_transformer", {"hidden_size": "abc"}, "backbone.transformer")
    with pytest.raises(ConfigError, match=r"num_hidden_layers=1\.5: needs a whole number"):
        architecture_with("gemma2_text_encoder", {"num_hidden_layers": 1.5}, "backbone.text_encoder")
    with pytest.raises(ConfigError, match=r"block_out_channels=32: needs a list"):
        architecture_with("sdxl_unet", {"block_out_channels": 32}, "backbone.unet")
    with pytest.raises(ConfigError, match=r"axes_dim_rope=\['a', 'b', 'c'\]: needs a list"):
        architecture_with("lumina2_transformer", {"axes_dim_rope": ["a", "b", "c"]}, "backbone.transformer")
    with pytest.raises(ConfigError, match="needs true or false"):  # 1 is an int, not a flag
        architecture_with("sdxl_unet", {"use_linear_projection": 1}, "backbone.unet")


def test_an_unknown_setting_is_refused_with_the_closest_names():
    with pytest.raises(ConfigError, match=r"backbone\.transformer\.hiden_size is not a setting of this architecture "
                                          r"\(lumina2_transformer\)\. Did you mean backbone\.transformer\.hidden_size"):
        architecture_with("lumina2_transformer", {"hiden_size": 64}, "backbone.transformer")


def test_numbers_and_nulls_where_the_architecture_allows_them():
    # a float setting takes a whole number; a setting the architecture leaves null takes any value
    assert architecture_with("lumina2_transformer", {"norm_eps": 1, "ffn_dim_multiplier": 1.5},
                             "backbone.transformer")["norm_eps"] == 1


def test_unet_per_block_settings_take_one_value_or_one_per_block():
    assert architecture_with("sdxl_unet", {"transformer_layers_per_block": 1}, "backbone.unet")
    assert architecture_with("sdxl_unet", {"transformer_layers_per_block": [1, 2, 3]}, "backbone.unet")
    with pytest.raises(ConfigError, match=r"transformer_layers_per_block=\[1, 1\] has 2 entries, but the architecture "
                                          r"has 3 down blocks \(backbone\.unet\.down_block_types\)"):
        architecture_with("sdxl_unet", {"transformer_layers_per_block": [1, 1]}, "backbone.unet")
    with pytest.raises(ConfigError, match=r"block_out_channels=\[32, 64\] has 2 entries"):
        architecture_with("sdxl_unet", {"block_out_channels": [32, 64]}, "backbone.unet")
    # a list where the architecture holds one number is refused outside the per-block settings
    with pytest.raises(ConfigError, match="sample_size"):
        architecture_with("sdxl_unet", {"sample_size": [32, 32]}, "backbone.unet")
