"""The Kandinsky 2.2 converter on the diffusers-written tiny folders: the model folder it writes, and what it refuses."""

import json
import shutil

import pytest
import torch
from fixtures.kandinsky import loader as kf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dalle2_core.checkpoint import load_component, read_index
from dalle2_core.convert.diffusers_folder import DiffusersFolderError, PickleWeightsRefused
from dalle2_core.convert.materialize import WeightsError
from dalle2_core.families.kandinsky import config as kc, keys
from dalle2_core.families.kandinsky.convert import KANDINSKY_DEFAULTS, convert_kandinsky

R = kf.reference()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("kandinsky") / "model"
    result = convert_kandinsky(kf.PRIOR, kf.DECODER, out, inpaint_dir=kf.INPAINT)
    assert result.path == out and any("zero-image embedding" in note for note in result.notes)
    return out


def close(ours, theirs, tolerance=1e-5):
    assert ours.shape == theirs.shape and (ours.float() - theirs.float()).abs().max() < tolerance


def test_model_folder_layout_and_index(converted):
    index = read_index(converted)
    assert index.family == "kandinsky" and index.components == ["clip", "prior", "decoder"]
    assert index.defaults == KANDINSKY_DEFAULTS and (index.defaults.steps, index.defaults.cond_scale) == (100, 4.0)
    assert sorted(p.name for p in converted.iterdir()) == ["clip", "decoder", "decoder_inpaint", "image_encoder", "model_index.json", "prior"]
    assert not list(converted.parent.glob(".model.tmp-*"))
    classes = {name: json.loads((converted / name / "config.json").read_text())["class"] for name in ("clip", "prior", "decoder",
                                                                                                       "image_encoder", "decoder_inpaint")}
    assert classes == {"clip": "HFClipAdapter", "prior": "StandardizedPrior", "decoder": "KandinskyDecoder",
                       "image_encoder": "HFClipAdapter", "decoder_inpaint": "AdmUnet"}


@torch.no_grad()
def test_every_component_reloads_and_matches_diffusers(converted):
    clip = load_component(converted / "clip")
    assert clip.visual is None and clip.text is not None  # text-to-image loads no vision tower
    text = clip.embed_text(R["text.input_ids"])
    close(text.text_embed, R["text.text_embeds"])
    close(text.text_encodings, R["text.last_hidden_state"])

    prior = load_component(converted / "prior")
    out = prior.net(R["prior.x"], R["prior.t"], text_embed=R["prior.text_embed"], text_encodings=R["prior.text_states"],
                    text_mask=R["prior.text_mask"])
    close(out, R["prior.out"])

    decoder = load_component(converted / "decoder")
    close(decoder.null_image_embed, R["zero_image_embed"][0])
    close(decoder(R["unet.x"], R["unet.t"], image_embed=R["unet.image_embeds"]), R["unet.out"][:, :4])
    close(decoder.movq.decode(R["movq.decode_input"]), R["movq.decoded"])

    inpaint = load_component(converted / "decoder_inpaint")
    close(inpaint(R["inpaint_unet.x"], R["inpaint_unet.t"], image_embed=R["unet.image_embeds"]), R["inpaint_unet.out"])


@torch.no_grad()
def test_vision_tower_is_stored_in_float16_and_cast_on_load(converted):
    with safe_open(str(converted / "image_encoder" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    tower = load_component(converted / "image_encoder", dtype=torch.float32)
    assert tower.text is None and {p.dtype for p in tower.parameters()} == {torch.float32}
    close(tower.encode_pixel_values(R["vision.pixel_values"].float()).image_embed, R["vision.image_embeds"])


@torch.no_grad()
def test_a_dtype_stores_every_network_in_it(tmp_path):
    out = convert_kandinsky(kf.PRIOR, kf.DECODER, tmp_path / "half", dtype=torch.float16).path
    for name in ("clip", "prior", "decoder", "image_encoder"):
        with safe_open(str(out / name / "model.safetensors"), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, name
    decoder = load_component(out / "decoder", dtype=torch.float32)
    close(decoder.null_image_embed, R["zero_image_embed"][0], tolerance=1e-3)
    close(decoder(R["unet.x"], R["unet.t"], image_embed=R["unet.image_embeds"]), R["unet.out"][:, :4], tolerance=1e-2)


def test_an_empty_output_folder_is_used_and_a_non_empty_one_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an empty folder"):
        convert_kandinsky(kf.PRIOR, kf.DECODER, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert convert_kandinsky(kf.PRIOR, kf.DECODER, tmp_path / "empty").path.is_dir()
    assert not (tmp_path / "empty" / "decoder_inpaint").exists()  # no inpainting folder given


def test_folders_of_another_pipeline_are_refused(tmp_path):
    with pytest.raises(DiffusersFolderError, match="holds a KandinskyV22Pipeline; expected KandinskyV22PriorPipeline"):
        convert_kandinsky(kf.DECODER, kf.DECODER, tmp_path / "out")
    with pytest.raises(DiffusersFolderError, match="holds a KandinskyV22InpaintPipeline; expected KandinskyV22Pipeline"):
        convert_kandinsky(kf.PRIOR, kf.INPAINT, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_a_bin_only_component_is_refused_in_one_line_before_anything_is_written(tmp_path):
    decoder = shutil.copytree(kf.DECODER, tmp_path / "decoder")
    (decoder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (decoder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never opened")
    with pytest.raises(PickleWeightsRefused) as err:
        convert_kandinsky(kf.PRIOR, decoder, tmp_path / "out")
    message = str(err.value)
    assert "component 'unet' has only pickled weights (diffusion_pytorch_model.bin)" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder"]


def test_a_tensor_of_the_wrong_shape_is_named_and_nothing_is_left(tmp_path):
    decoder = shutil.copytree(kf.DECODER, tmp_path / "decoder")
    weights = decoder / "movq" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["decoder.conv_out.weight"] = torch.zeros(3, 32, 1, 1)
    save_file(state, str(weights))
    with pytest.raises(WeightsError) as err:
        convert_kandinsky(kf.PRIOR, decoder, tmp_path / "out")
    message = str(err.value)
    assert "'decoder.conv_out.weight' has shape (3, 32, 1, 1)" in message and "(3, 32, 3, 3)" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder"]  # the half-written folder was removed


def test_an_inpainting_unet_of_another_architecture_is_refused_before_converting(tmp_path):
    inpaint = shutil.copytree(kf.INPAINT, tmp_path / "inpaint")
    config = json.loads((inpaint / "unet" / "config.json").read_text())
    (inpaint / "unet" / "config.json").write_text(json.dumps({**config, "layers_per_block": 1}))
    with pytest.raises(ValueError, match="must be the decoder's with 9 input channels .* and another architecture"):
        convert_kandinsky(kf.PRIOR, kf.DECODER, tmp_path / "out", inpaint_dir=inpaint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inpaint"]


def test_tiny_configs_translate_to_the_hub_layout_at_toy_widths():
    unet = kc.unet_config(json.loads((kf.DECODER / "unet" / "config.json").read_text()))
    assert unet.widths == (8, 16, 24) and unet.attention.levels == (False, True, True) and unet.attention.middle
    assert (unet.in_channels, unet.out_channels, unet.conditioning.context_dim, unet.conditioning.image_embed_dim) == (4, 8, 16, 8)
    assert unet.conditioning.image_tokens == 32 and not unet.conditioning.added_time_embed and unet.blocks.scale_shift
    movq = kc.movq_config(json.loads((kf.DECODER / "movq" / "config.json").read_text()))
    assert (movq.widths, movq.attention, movq.layers_per_block, movq.norm_groups, movq.codebook_size) == ((32, 32), (False, True), 1, 8, 12)
    options = kc.ddpm_options(json.loads((kf.DECODER / "scheduler" / "scheduler_config.json").read_text()))
    assert (options["beta_start"], options["beta_end"], options["steps_offset"]) == (0.00085, 0.012, 1)
    assert options["diffusion"].x0_clamp is None and options["diffusion"].sample_steps == 100


@pytest.mark.parametrize(
    "reader,path,change,message",
    [
        (kc.unet_config, "decoder/unet/config.json", {"encoder_hid_dim_type": "text_proj"}, "encoder_hid_dim_type='text_proj' is not supported"),
        (kc.unet_config, "decoder/unet/config.json", {"addition_embed_type": "text_image"}, "addition_embed_type='text_image' is not supported"),
        (kc.unet_config, "decoder/unet/config.json", {"encoder_hid_dim": None}, "is not Kandinsky 2.2's U-Net"),
        (kc.movq_config, "decoder/movq/config.json", {"norm_type": "group"}, "norm_type='group' is not supported; accepted: 'spatial'"),
        (kc.movq_config, "decoder/movq/config.json", {"up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]},
         "do not mirror down_block_types"),
        (kc.movq_config, "decoder/movq/config.json", {"vq_embed_dim": 3}, "vq_embed_dim=3 is not supported"),
        (kc.ddpm_options, "decoder/scheduler/scheduler_config.json", {"timestep_spacing": "trailing"}, "timestep_spacing='trailing' is not supported"),
        (kc.ddpm_options, "decoder/scheduler/scheduler_config.json", {"variance_type": "learned_range"}, "variance_type='learned_range'"),
        (kc.ddpm_options, "decoder/scheduler/scheduler_config.json", {"_class_name": "DDIMScheduler"}, "a DDIMScheduler config; expected DDPMScheduler"),
    ],
)
def test_unsupported_options_are_refused_in_one_line(reader, path, change, message):
    config = json.loads((kf.TINY / path).read_text())
    with pytest.raises(ValueError) as err:
        reader({**config, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_key_map_examples():
    assert keys.unet_key("add_embedding.image_norm.weight") == "image_conditioning.time_norm.weight"
    assert keys.unet_key("encoder_hid_proj.image_embeds.bias") == "image_conditioning.to_tokens.bias"
    assert keys.unet_key("up_blocks.0.attentions.2.add_v_proj.weight") == "ups.0.attentions.2.context_to_v.weight"
    assert keys.movq_key("decoder.up_blocks.1.resnets.0.norm1.norm_layer.weight") == "decoder.ups.1.resnets.0.norm1.norm.weight"
    assert keys.movq_key("decoder.mid_block.attentions.0.spatial_norm.conv_y.bias") == "decoder.mid.attention.norm.conv_y.bias"
    assert keys.movq_key("encoder.down_blocks.3.attentions.1.group_norm.weight") == "encoder.downs.3.attentions.1.norm.weight"
    assert keys.movq_key("encoder.down_blocks.0.downsamplers.0.conv.weight") == "encoder.downs.0.resample.conv.weight"
    assert keys.movq_key("decoder.conv_norm_out.norm_layer.bias") == "decoder.norm_out.norm.bias"
    assert keys.movq_key("quantize.embedding.weight") == "codebook.weight"
    with pytest.raises(ValueError, match="movq: no rule maps the diffusers key 'decoder.extra.weight'"):
        keys.movq_key("decoder.extra.weight")
