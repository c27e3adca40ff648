"""Typed configs: every value is checked against its field's annotation, wherever the config comes from."""

import json

import pytest
from helpers.checkpoint_tiny import save_tiny_model

from dalle2_core import DiffusionPriorNetwork, Unet
from dalle2_core.checkpoint import ModelLoadError, load_model
from dalle2_core.clip import OpenClipConfig
from dalle2_core.config import check_field_types
from dalle2_core.decoder import UnetBlocksConfig, UnetConditioningConfig, UnetConfig
from dalle2_core.decoder.decoder_config import DecoderDiffusionConfig
from dalle2_core.nn import CausalTransformerConfig


@pytest.mark.parametrize(
    "options, message",
    [
        # int: a string from a JSON file, and a float
        (dict(dim="64"), r"^Unet: UnetConfig option 'dim' must be int, got '64' \(str\)$"),
        (dict(dim=64.0), r"option 'dim' must be int, got 64.0 \(float\)"),
        # bool: an int is not accepted (JSON 1 is not true)
        (dict(dim=16, memory_efficient=1), r"UnetBlocksConfig option 'memory_efficient' must be bool, got 1 \(int\)"),
        # str
        (dict(dim=16, block_type=3), r"option 'block_type' must be str, got 3 \(int\)"),
        # X | None
        (dict(dim=16, image_embed_dim="8"), r"option 'image_embed_dim' must be int or None, got '8' \(str\)"),
        # tuples, element by element; unions of a scalar and a tuple
        (dict(dim=16, dim_mults=(1, "2")), r"option 'dim_mults' must be a tuple of int, got \(1, '2'\) \(tuple\)"),
        (dict(dim=16, num_resnet_blocks=[1, 2.5]), r"'num_resnet_blocks' must be int or a tuple of int, got \(1, 2.5\)"),
        (dict(dim=16, self_attn=(True, 0)), r"'self_attn' must be bool or a tuple of bool, got \(True, 0\)"),
    ],
)
def test_a_wrong_type_names_the_option_the_value_and_the_type(options, message):
    with pytest.raises(TypeError, match=message):
        Unet(**options)


def test_what_each_annotation_accepts():
    # float accepts ints, and the value is kept as given
    assert CausalTransformerConfig(depth=1, ff_mult=2).ff_mult == 2
    with pytest.raises(TypeError, match="option 'ff_mult' must be float, got '2'"):
        CausalTransformerConfig(depth=1, ff_mult="2")
    with pytest.raises(TypeError, match="option 'attn_dropout' must be float, got True"):
        CausalTransformerConfig(depth=1, attn_dropout=True)
    # lists become tuples, for the dataclass itself too (configs stay hashable)
    config = UnetConfig(dim=16, dim_mults=[1, 2])
    assert config.dim_mults == (1, 2) and hash(config)
    # None where the annotation allows it; `Any` fields are not checked, `dict` ones shallowly
    assert UnetConditioningConfig(image_embed_dim=None).image_embed_dim is None
    assert DecoderDiffusionConfig(sample_timesteps=("any", "thing")).sample_timesteps == ("any", "thing")
    assert OpenClipConfig(model_kwargs={"embed_dim": [1, 2]}).model_kwargs == {"embed_dim": [1, 2]}
    with pytest.raises(TypeError, match=r"OpenClipConfig option 'model_kwargs' must be dict, got \(1,\) \(tuple\)"):
        OpenClipConfig(model_kwargs=[1])
    # a sub-config must be one
    with pytest.raises(TypeError, match=r"UnetConfig option 'blocks' must be UnetBlocksConfig, got 3 \(int\)"):
        UnetConfig.from_dict({"dim": 16, "blocks": 3})
    check_field_types(UnetBlocksConfig())  # the defaults fit their own annotations


def test_from_dict_and_nested_sub_configs_are_checked_too():
    with pytest.raises(TypeError, match=r"UnetBlocksConfig option 'init_cross_embed_kernel_sizes' must be a tuple of int"):
        UnetConfig.from_dict({"dim": 16, "blocks": {"init_cross_embed_kernel_sizes": [3, "7"]}})
    with pytest.raises(TypeError, match=r"CausalTransformerConfig option 'heads' must be int, got '4'"):
        DiffusionPriorNetwork(dim=16, depth=1, heads="4")


def test_a_model_folder_with_a_wrong_type_names_the_file_and_the_option(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    path = folder / "decoder" / "config.json"
    entry = json.loads(path.read_text())
    entry["config"]["unets"][0]["dim"] = "8"
    path.write_text(json.dumps(entry))
    with pytest.raises(ModelLoadError, match=r"decoder/config.json is not a valid Decoder config: UnetConfig option 'dim' "
                                             r"must be int, got '8' \(str\)$"):
        load_model(folder)
