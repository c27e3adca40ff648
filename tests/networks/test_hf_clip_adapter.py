"""HFClipAdapter against transformers' own outputs (tests/fixtures/hf_clip, written by its make_fixtures.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from dalle2_core.checkpoint import load_component, save_component
from dalle2_core.clip import ClipAdapter, HFClipAdapter
from dalle2_core.clip.hf_clip_adapter import preprocessor_options
from dalle2_core.convert.diffusers_folder import PickleWeightsRefused
from dalle2_core.convert.hf_clip_keys import open_clip_text_cfg, open_clip_vision_cfg
from dalle2_core.convert.materialize import WeightsError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hf_clip"
TEXT, VISION, PREP = FIXTURES / "text_encoder", FIXTURES / "image_encoder", FIXTURES / "feature_extractor"
REF = load_file(FIXTURES / "reference.safetensors")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073))[:, None, None]
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711))[:, None, None]


def image() -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(FIXTURES / "image.png"))).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def karlo():
    """As Karlo's pipeline uses the towers: raw projections, the whole last hidden state."""
    return HFClipAdapter.from_transformers(TEXT, VISION, PREP, normalize=False, zero_padding=False)


@pytest.fixture(scope="module")
def contract():
    return HFClipAdapter.from_transformers(TEXT, VISION, PREP)


def max_error(a, b) -> float:
    return (a - b).abs().max().item()


def test_text_tower_matches_transformers(karlo):
    with torch.no_grad():
        out = karlo.embed_text(REF["input_ids"])
    assert max_error(out.text_embed, REF["text_embeds"]) < 1e-5
    # every position, the ones after the end-of-text token included (what UnCLIPPipeline feeds the prior)
    assert max_error(out.text_encodings, REF["last_hidden_state"]) < 1e-5
    assert out.text_encodings.shape == (3, 16, 16) and out.text_mask.sum(-1).tolist() == [7, 16, 2]
    assert REF["last_hidden_state"][0, 7:].abs().min() > 0  # transformers does not zero the padding either


def test_contract_options_normalise_and_zero_the_padding(contract):
    with torch.no_grad():
        out = contract.embed_text(REF["input_ids"])
    torch.testing.assert_close(out.text_embed, F.normalize(REF["text_embeds"], dim=-1), atol=1e-6, rtol=0)
    mask = out.text_mask[..., None]
    assert max_error(out.text_encodings, REF["last_hidden_state"] * mask) < 1e-5
    assert out.text_encodings[0, 7:].abs().max() == 0 and out.text_encodings[2, 2:].abs().max() == 0
    assert isinstance(contract, ClipAdapter) and (contract.dim_latent, contract.dim_text, contract.max_text_len) == (8, 16, 16)


def test_vision_tower_matches_transformers(karlo, contract):
    with torch.no_grad():
        random = karlo.encode_pixel_values(REF["random_pixel_values"])
        processed = karlo.encode_pixel_values(REF["pixel_values"])
        normalised = contract.encode_pixel_values(REF["pixel_values"])
    assert max_error(random.image_embed, REF["random_image_embeds"]) < 1e-5 and random.image_encodings is None
    assert max_error(processed.image_embed, REF["image_embeds"]) < 1e-5
    assert max_error(normalised.image_embed, F.normalize(REF["image_embeds"], dim=-1)) < 1e-6


def test_preprocessing_follows_clip_image_processor(karlo):
    pixels = karlo.preprocess(image())  # 45 x 61 -> shorter side 32, longer int(32 * 61 / 45) = 43, centre crop 32
    assert pixels.shape == (1, 3, 32, 32)
    for reference in (REF["pixel_values"], REF["pixel_values_pil"]):  # torchvision and PIL backends
        error = (pixels - reference) * STD  # in [0, 1] units: the references resized in 8 bits
        assert error.abs().max() < 2.5 / 255 and error.abs().mean() < 0.5 / 255
    with torch.no_grad():
        embed = karlo.embed_image(image()).image_embed
    assert F.cosine_similarity(embed, REF["image_embeds"]).item() > 0.9999
    portrait = karlo.preprocess(torch.rand(2, 3, 61, 45))
    square = karlo.preprocess(torch.rand(1, 3, 32, 32))
    assert portrait.shape == (2, 3, 32, 32) and square.shape == (1, 3, 32, 32)
    flat = torch.full((1, 3, 40, 40), 0.5)
    torch.testing.assert_close(karlo.preprocess(flat)[0], ((0.5 - MEAN) / STD).expand(3, 32, 32))
    with pytest.raises(ValueError, match="3-channel images, got 1 channels"):
        karlo.embed_image(torch.rand(1, 1, 32, 32))


def test_text_only_adapter_and_missing_towers():
    text_only = HFClipAdapter.from_transformers(text_encoder=TEXT)
    assert text_only.visual is None and text_only.config.vision is False and text_only.config.model_kwargs["embed_dim"] == 8
    with pytest.raises(ValueError, match="has no vision tower"):
        text_only.embed_image(torch.rand(1, 3, 32, 32))
    image_only = HFClipAdapter.from_transformers(image_encoder=VISION, feature_extractor=PREP)
    with pytest.raises(ValueError, match="has no text tower"):
        image_only.embed_text(REF["input_ids"])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\), got ids from 0 to 49407"):
        text_only.embed_text("a frog")  # the tiny tower's vocabulary is not OpenAI's
    with pytest.raises(ValueError, match="needs a text_encoder folder, an image_encoder folder, or both"):
        HFClipAdapter.from_transformers()


def test_checkpoint_round_trip_rebuilds_from_the_config(karlo, tmp_path):
    save_component(karlo, tmp_path / "clip")
    entry = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert entry["class"] == "HFClipAdapter" and entry["config"]["normalize"] is False
    loaded = load_component(tmp_path / "clip").eval()
    assert isinstance(loaded, HFClipAdapter) and loaded.config == karlo.config
    saved, original = loaded.state_dict(), karlo.state_dict()
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    with torch.no_grad():
        # same values; the converted tensors are views of the mapped file (16-byte aligned), where CPU kernels
        # may vectorise differently from the aligned copies load_component makes: equal to float rounding
        a, b = loaded.embed_text(REF["input_ids"]), karlo.embed_text(REF["input_ids"])
        assert max_error(a.text_embed, b.text_embed) < 1e-6 and max_error(a.text_encodings, b.text_encodings) < 1e-6
        assert max_error(loaded.embed_image(image()).image_embed, karlo.embed_image(image()).image_embed) < 1e-6


def test_dtype_and_position_ids_of_older_files(tmp_path):
    folder = tmp_path / "text_encoder"
    shutil.copytree(TEXT, folder)
    state = load_file(folder / "model.safetensors")
    # transformers before 4.31 stored the position table; it is checked and dropped
    save_file(state | {"text_model.embeddings.position_ids": torch.arange(16)[None]}, folder / "model.safetensors")
    wide = HFClipAdapter.from_transformers(folder, normalize=False, dtype=torch.float64)
    assert wide.text.token_embedding.weight.dtype == torch.float64 and wide.text.attn_mask.dtype == torch.float64
    with torch.no_grad():
        assert max_error(wide.embed_text(REF["input_ids"]).text_embed, REF["text_embeds"].double()) < 1e-5
    save_file(state | {"text_model.embeddings.position_ids": torch.arange(1, 17)[None]}, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"tensor 'text_model\.embeddings\.position_ids' should be the positions 0\.\.15"):
        HFClipAdapter.from_transformers(folder)


def test_foreign_files_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "text_encoder"
    shutil.copytree(TEXT, folder)
    state = load_file(folder / "model.safetensors")
    save_file(state | {"text_projection.weight": torch.zeros(8, 15)}, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=(
        r"text_encoder: tensor\(s\) 'text_projection\.weight' \(8, 15\) give \(15, 8\); 'text\.text_projection' of the module has shape \(16, 8\)$"
    )):
        HFClipAdapter.from_transformers(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(PickleWeightsRefused, match=r"has only pickled weights \(pytorch_model\.bin\); pickles are never opened"):
        HFClipAdapter.from_transformers(folder)


def test_transformers_configs_that_open_clip_cannot_reproduce_are_refused():
    text = json.loads((TEXT / "config.json").read_text())
    assert open_clip_text_cfg(text) == (8, True, {
        "context_length": 16, "vocab_size": 64, "width": 16, "heads": 2, "layers": 2, "mlp_ratio": 4.0,
    })
    with pytest.raises(ValueError, match=r"text tower: hidden_act 'gelu_new' is not supported; accepted: quick_gelu, gelu"):
        open_clip_text_cfg(text | {"hidden_act": "gelu_new"})
    with pytest.raises(ValueError, match=r"text tower: eos_token_id 7 is not supported; accepted: 2 or 63"):
        open_clip_text_cfg(text | {"eos_token_id": 7})
    with pytest.raises(ValueError, match=r"hidden_size 16 is not divisible by num_attention_heads 3"):
        open_clip_text_cfg(text | {"num_attention_heads": 3})
    assert open_clip_text_cfg(text | {"layer_norm_eps": 1e-6})[2]["norm_kwargs"] == {"eps": 1e-6}
    vision = json.loads((VISION / "config.json").read_text())
    assert open_clip_vision_cfg(vision)[2] == {"image_size": 32, "patch_size": 8, "width": 16, "layers": 2, "head_width": 8, "mlp_ratio": 4.0}
    with pytest.raises(ValueError, match=r"config model_type 'siglip_vision_model' is not a CLIP vision tower"):
        open_clip_vision_cfg(vision | {"model_type": "siglip_vision_model"})


@pytest.mark.parametrize("change, message", [
    ({"resample": 2}, r"resample=2 is not supported; accepted: 3 \(bicubic\)"),
    ({"do_center_crop": False}, r"do_center_crop=False is not supported; accepted: true"),
    ({"crop_size": {"height": 30, "width": 30}}, r"size 32 / crop_size 30 do not fit the vision tower's image size 32"),
    ({"rescale_factor": 1.0}, r"rescale_factor=1\.0 is not supported; accepted: 1/255"),
    ({"do_pad": True}, r"preprocessor option do_pad=True is not supported; accepted keys: crop_size, "),
    ({"image_std": [0.5, 0.5]}, r"image_mean / image_std must be 3 values"),
])
def test_unsupported_preprocessing_is_refused(change, message):
    config = json.loads((PREP / "preprocessor_config.json").read_text())
    assert preprocessor_options(config, 32)["resize_to"] == 32
    # the older CLIPFeatureExtractor layout: integer size and crop_size
    older = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
             "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3, "size": 256}
    assert preprocessor_options(older, 224)["resize_to"] == 256
    with pytest.raises(ValueError, match=message):
        preprocessor_options(config | change, 32)
