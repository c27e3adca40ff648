"""diffusers configs and state dicts of Karlo onto ours: what is carried, what is refused, and how keys map."""

import pytest
import torch
from fixtures.karlo import loader as kf

from dalle2_core.adm import AdmUnet, TextProj
from dalle2_core.convert import diffusers_config as dc, diffusers_keys as dk


def test_tiny_configs_convert_to_the_same_block_layout_as_karlo():
    decoder = dc.unet2d_condition_config(kf.config("decoder"))
    assert decoder.widths == (4, 8, 12) and decoder.attention.levels == (False, True, True) and decoder.attention.middle
    assert decoder.conditioning.added_time_embed and decoder.conditioning.context_dim == 8 and decoder.blocks.scale_shift
    assert decoder.time_embed_dim == 16 and decoder.blocks.norm_groups == 4
    sr = dc.unet2d_config(kf.config("super_res_first"))
    assert (sr.in_channels, sr.out_channels, sr.attends, sr.blocks.scale_shift) == (6, 3, False, False)
    prior = dc.prior_transformer_config(kf.config("prior"))
    assert (prior.width, prior.depth, prior.num_text_tokens, prior.embed_dim) == (16, 2, 5, 8)


def test_scheduler_configs_become_diffusion_configs():
    prior = dc.unclip_scheduler_config(kf.config("prior_scheduler"), sample_steps=25)
    assert (prior.objective, prior.learned_variance, prior.x0_clamp, prior.sample_steps) == ("x0", False, 5.0, 25)
    assert prior.float32_schedule and prior.posterior_log_variance == "unclipped" and prior.beta_schedule == "cosine"
    decoder = dc.unclip_scheduler_config(kf.config("decoder_scheduler"))
    assert (decoder.objective, decoder.learned_variance, decoder.x0_clamp) == ("eps", True, 1.0)
    assert dc.unclip_scheduler_config({"clip_sample": False}).x0_clamp is None


@pytest.mark.parametrize(
    "build,config,message",
    [
        (dc.prior_transformer_config, {"norm_in_type": "layer"}, "norm_in_type='layer' is not supported; accepted: None"),
        (dc.prior_transformer_config, {"added_emb_type": None}, "added_emb_type=None is not supported"),
        (dc.prior_transformer_config, {"clip_embed_dim": 1024}, "clip_embed_dim=1024 is not supported"),
        (dc.prior_transformer_config, {"rotary": True}, "unsupported option(s) rotary"),
        (dc.text_proj_config, {"clip_embeddings_dim": 8}, "time_embed_dim, cross_attention_dim must be given"),
        (dc.unclip_scheduler_config, {"beta_schedule": "linear"}, "beta_schedule='linear' is not supported"),
        (dc.unclip_scheduler_config, {"prediction_type": "v_prediction"}, "prediction_type='v_prediction' is not supported"),
        (dc.unet2d_config, {"add_attention": True}, "add_attention=True is not supported; accepted: False"),
    ],
)
def test_unsupported_options_are_refused_in_one_line(build, config, message):
    base = {"unet2d_config": kf.config("super_res_first")}.get(build.__name__, {})
    with pytest.raises(ValueError) as err:
        build({**base, **config})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type='UNetMidBlock2DCrossAttn' is not supported"),
        ({"down_block_types": ["ResnetDownsampleBlock2D", "CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]},
         "down block type(s) CrossAttnDownBlock2D not supported"),
        ({"up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"]},
         "do not mirror down_block_types"),
        ({"attention_head_dim": [4, 4, 8]}, "attention_head_dim=(4, 4, 8) is not supported; accepted: one value for every block"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep' is not supported; accepted: None, 'identity'"),
        ({"resnet_time_scale_shift": "spatial"}, "resnet_time_scale_shift='spatial' is not supported"),
        ({"sample_size": [8, 16]}, "sample_size=(8, 16) is not supported; accepted: a square size"),
        ({"encoder_hid_dim_type": "text_proj"}, "encoder_hid_dim_type='text_proj' is not supported"),
    ],
)
def test_unsupported_decoder_options_are_refused(change, message):
    with pytest.raises(ValueError, match="decoder") as err:
        dc.unet2d_condition_config({**kf.config("decoder"), **change})
    assert message in str(err.value)


def test_metadata_keys_are_ignored_and_defaults_fill_absent_options():
    config = {k: v for k, v in kf.config("text_proj").items() if k not in ("clip_extra_context_tokens",)}
    assert config["_class_name"] == "UnCLIPTextProjModel"
    assert dc.text_proj_config(config).num_image_tokens == 4


def test_unet_key_map_examples():
    assert dk.unet_key("down_blocks.1.attentions.0.add_k_proj.weight") == "downs.1.attentions.0.context_to_k.weight"
    assert dk.unet_key("down_blocks.0.downsamplers.0.time_emb_proj.bias") == "downs.0.resample.time_proj.bias"
    assert dk.unet_key("up_blocks.2.resnets.1.conv_shortcut.weight") == "ups.2.resnets.1.skip.weight"
    assert dk.unet_key("up_blocks.0.upsamplers.0.norm1.weight") == "ups.0.resample.norm1.weight"
    assert dk.unet_key("mid_block.attentions.0.to_out.0.bias") == "mid.attention.to_out.bias"
    assert dk.unet_key("mid_block.resnets.1.conv2.weight") == "mid.resnet_2.conv2.weight"
    assert dk.unet_key("conv_norm_out.weight") == "norm_out.weight"
    assert dk.prior_key("transformer_blocks.3.ff.net.0.proj.weight") == "net.blocks.3.ff_in.weight"
    assert dk.prior_key("prd_embedding") == "net.readout"
    assert dk.text_proj_key("learned_classifier_free_guidance_embeddings") == "null_image_embed"


def test_unknown_missing_and_misshapen_keys_are_errors():
    unet = AdmUnet(dc.unet2d_config(kf.config("super_res_first")))
    state = kf.weights("super_res_first")
    with pytest.raises(ValueError, match="no rule maps the diffusers key 'down_blocks.0.resnets.0.conv_extra.weight'"):
        dk.unet_state({**state, "down_blocks.0.resnets.0.conv_extra.weight": torch.zeros(1)}, unet.state_dict())
    with pytest.raises(ValueError, match="missing keys conv_out.bias"):
        dk.unet_state({k: v for k, v in state.items() if k != "conv_out.bias"}, unet.state_dict())
    with pytest.raises(ValueError, match=r"shape mismatch \(file vs config\) conv_in.weight \(4, 3, 3, 3\) vs \(4, 6, 3, 3\)"):
        dk.unet_state({**state, "conv_in.weight": torch.zeros(4, 3, 3, 3)}, unet.state_dict())
    with pytest.raises(ValueError, match="needs the components"):
        dk.cascade_state({"decoder": {}}, {})
    text_proj = TextProj(dc.text_proj_config(kf.config("text_proj")))
    with pytest.raises(ValueError, match="text_proj: no rule maps the diffusers key 'clip_mean'"):
        dk.text_proj_state({**kf.weights("text_proj"), "clip_mean": torch.zeros(1, 8)}, text_proj.state_dict())


def test_mapped_weights_are_the_diffusers_tensors():
    prior = kf.prior()
    state = kf.weights("prior")
    assert torch.equal(prior.net.blocks[1].attn.to_out.weight, state["transformer_blocks.1.attn1.to_out.0.weight"])
    assert torch.equal(prior.clip_std, state["clip_std"][0]) and prior.clip_std.shape == (8,)
    assert torch.equal(kf.text_proj().null_image_embed, kf.weights("text_proj")["learned_classifier_free_guidance_embeddings"])
