"""LAION import: converted scaled-down 1.1.0 checkpoints reproduce 1.1.0's outputs; full-size structure matches.

Fixtures (tests/fixtures/laion/make_fixtures.py, run with dalle2-pytorch 1.1.0): a prior, a 16 px
decoder and a 16 -> 32 px upsampler with the options of LAION's published configs, saved in the
published file formats, and 1.1.0's outputs for fixed inputs.
"""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from dalle2_core.checkpoint import SamplingSettings, load_model
from dalle2_core.clip import CLIP
from dalle2_core.decoder import Unet
from dalle2_core.diffusion import classifier_free_guidance, static_clamp
from dalle2_core.families.unclip.laion import convert_laion, prior_weights
from dalle2_core.families.unclip.laion_config import (
    Notes,
    decoder_options,
    decoder_section,
    prior_configs,
    stage_options,
    unet_config,
)
from dalle2_core.families.unclip.laion_keys import SCHEDULE_BUFFERS, check_state, split_prefix, unet_state
from dalle2_core.helpers import normalize_neg_one_to_one
from dalle2_core.prior import DiffusionPriorNetwork
from dream_cli.cli import cli

FIXTURES = Path(__file__).parents[1] / "fixtures" / "laion"
FILES = {name: FIXTURES / f"{name}.{'json' if name.endswith('config') else 'pth'}"
         for name in ("prior", "prior_config", "decoder", "upsampler", "upsampler_config")}
TOLERANCE = 1e-5


def tiny_clip():
    """A CLIP with the fixtures' widths (embeddings and text encodings 16 wide, 6 text tokens)."""
    torch.manual_seed(0)
    return CLIP(dim_text=16, dim_image=16, dim_latent=16, num_text_tokens=49408, text_enc_depth=1, text_seq_len=6,
                text_heads=2, visual_enc_depth=1, visual_image_size=16, visual_patch_size=8, visual_heads=2)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("laion") / "model"
    result = convert_laion(FILES, out, clip=tiny_clip())
    return result, load_model(out)


@pytest.fixture(scope="module")
def ref():
    return load_file(FIXTURES / "reference.safetensors")


def err(a, b):
    return (a - b).abs().max().item()


def test_prior_matches_1_1_0(converted, ref):
    prior = converted[1].prior
    x, t = ref["prior.in.x"], ref["prior.in.t"]
    cond = dict(text_embed=ref["prior.in.text_embed"], text_encodings=ref["prior.in.text_encodings"])
    with torch.no_grad():
        out = prior.net(x, t, **cond)
        # one deterministic step: the posterior around the predicted x0 (x is in the scaled space)
        mean, variance, log_variance, *_ = prior.diffusion.p_mean_variance(prior.net, x, t, model_kwargs=cond)
    assert err(out, ref["prior.net"]) <= TOLERANCE
    assert err(mean, ref["prior.mean"]) <= TOLERANCE
    assert err(variance, ref["prior.variance"]) <= TOLERANCE
    assert err(log_variance, ref["prior.log_variance"]) <= TOLERANCE
    assert out.abs().max() > 0.5  # the references are not trivially small
    # 1.1.0's prior guidance was a no-op: the converted prior refuses guidance instead of using untrained nulls
    assert prior.config.cond_drop_prob == 0 and prior.config.net.transformer.pb_relax_alpha == 128
    with pytest.raises(ValueError, match="cond_scale=2.0 needs a prior trained with conditional dropout"):
        prior.sample(text_embed=cond["text_embed"], text_encodings=cond["text_encodings"], cond_scale=2.0, steps=2)


def test_decoder_unet_with_and_without_guidance_matches_1_1_0(converted, ref):
    decoder = converted[1].decoder
    unet, diffusion = decoder.unets[0], decoder.diffusions[0]
    x, t = ref["decoder.in.x"], ref["decoder.in.t"]
    cond = dict(image_embed=ref["decoder.in.image_embed"], text_encodings=ref["decoder.in.text_encodings"])
    # what Decoder.sample runs: guidance on every output channel, x0 clamped to [-1, 1]
    assert not decoder.config.conditioning.dynamic_thresholding and decoder.config.conditioning.clip_denoised
    guided = classifier_free_guidance(unet, 1.7, guide_variance=True, **cond)
    with torch.no_grad():
        out = unet(x, t, **cond)
        out_guided = guided(x, t)
        mean, variance, log_variance, *_ = diffusion.p_mean_variance(guided, x, t, denoise_fn=static_clamp)
    assert out.shape == (2, 6, 16, 16)  # learned variance: 3 more channels
    assert err(out, ref["decoder.out"]) <= TOLERANCE
    assert err(out_guided, ref["decoder.guided"]) <= TOLERANCE
    assert err(mean, ref["decoder.mean"]) <= TOLERANCE
    assert err(variance, ref["decoder.variance"]) <= TOLERANCE
    assert err(log_variance, ref["decoder.log_variance"]) <= TOLERANCE
    assert err(out, out_guided) > 1e-2  # guidance does change the output


def test_upsampler_matches_1_1_0(converted, ref):
    decoder = converted[1].decoder
    unet, diffusion = decoder.unets[1], decoder.diffusions[1]
    x, t = ref["upsampler.in.x"], ref["upsampler.in.t"]
    # the 16 px image as the cascade hands it on: nearest-upsampled, then to [-1, 1]
    lowres = decoder.lowres_conds[1].for_sampling(ref["upsampler.in.lowres_01"], target_size=32).image
    cond = dict(text_encodings=ref["upsampler.in.text_encodings"], lowres_cond_img=normalize_neg_one_to_one(lowres))
    with torch.no_grad():
        out = unet(x, t, **cond)
        out_guided = classifier_free_guidance(unet, 1.7, guide_variance=True, **cond)(x, t)
        step = classifier_free_guidance(unet, 1.0, **cond)
        mean, variance, log_variance, *_ = diffusion.p_mean_variance(step, x, t, denoise_fn=static_clamp)
    assert not unet.cond_on_image_embeds and unet.cond_on_text_encodings and unet.lowres_cond
    assert err(out, ref["upsampler.out"]) <= TOLERANCE
    assert err(out_guided, ref["upsampler.guided"]) <= TOLERANCE
    assert err(mean, ref["upsampler.mean"]) <= TOLERANCE
    assert err(variance, ref["upsampler.variance"]) <= TOLERANCE
    assert err(log_variance, ref["upsampler.log_variance"]) <= TOLERANCE


def test_model_folder_has_laion_defaults_and_notes(converted):
    result, model = converted
    assert model.defaults == SamplingSettings(
        cond_scale=(1.7, 1.0), prior_cond_scale=1.0, prior_samples=2, steps=(100, 50), prior_steps=64, sampler="ddpm"
    )
    cfg = model.decoder.config
    assert cfg.image_sizes == (16, 32) and cfg.diffusion.timesteps == 1000
    assert cfg.diffusion.beta_schedule == ("cosine", "cosine") and model.decoder.learned_variance == (True, False)
    assert [u.config.blocks.downsample_mode for u in model.decoder.unets] == ["conv", "conv"]
    assert model.decoder.unets[0].config.conditioning.max_text_len == 256  # text padded to 256 tokens
    notes = json.loads((result.path / "conversion.json").read_text())["notes"]
    assert notes == list(result.notes) and len(notes) == 3
    assert "timesteps=100" in notes[2] and "1000 are used" in notes[2]


def test_dream_samples_from_the_converted_folder(converted, tmp_path):
    folder = converted[0].path
    args = ["--model", folder, "--steps", "2", "--prior-steps", "2", "--seed", "1", "--outdir", tmp_path, "-q", "a red cube"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    with Image.open(result.stdout.strip()) as img:
        pixels = torch.frombuffer(bytearray(img.convert("L").tobytes()), dtype=torch.uint8).float()
        assert img.size == (32, 32)  # both stages ran
    assert pixels.std() > 1.0


FULL = json.loads((FIXTURES / "full_size.json").read_text())


def meta_state(keys: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def test_full_size_prior_keys_and_shapes_match_exactly():
    full = FULL["prior"]
    config = prior_configs(full["config"], Notes())
    with torch.device("meta"):
        net = DiffusionPriorNetwork(config.net)
    state = meta_state(full["keys"])
    assert set(split_prefix(state, "noise_scheduler.")) == set(SCHEDULE_BUFFERS)
    assert {k.split(".")[0] for k in state} == {"net", "noise_scheduler"}
    mapped = prior_weights(split_prefix(state, "net."), net)  # raises on any missing, extra or misshapen key
    assert set(mapped) == set(net.state_dict())
    assert mapped["null_text_encodings"].shape == (1, 77, 768)
    added = {"null_text_embeds", "null_image_embed"}  # this project's guidance nulls, absent in 1.1.0
    assert sum(v.numel() for k, v in mapped.items() if k not in added) == sum(
        v.numel() for k, v in state.items() if k.startswith("net.") and not k.endswith("rotary_emb.freqs")
    )


@pytest.mark.parametrize("piece, index", [("decoder", 0), ("upsampler", 1)])
def test_full_size_unet_keys_and_shapes_match_exactly(piece, index):
    full = FULL[piece]
    section = decoder_section(full["config"], piece)
    opts = decoder_options(section, piece)
    stage = stage_options(opts, index, len(section["unets"]))
    config = unet_config(section["unets"][index], index=index, stage=stage, unconditional=False, what=piece, notes=Notes())
    with torch.device("meta"):
        unet = Unet(config)
    state = meta_state(full["keys"])
    mapped = unet_state(split_prefix(state, f"unets.{index}."), unet.state_dict(), what=piece)
    check_state(mapped, unet.state_dict(), piece)
    if piece == "decoder":
        assert set(split_prefix(state, "noise_schedulers.0.")) == set(SCHEDULE_BUFFERS)
        assert mapped["null_text_embed"].shape == (1, 256, 512)  # text padded to 256 tokens
        assert sum(v.numel() for v in mapped.values()) == 982_610_118  # as tests/networks/test_unet_spec.py
    else:
        assert "null_image_embed" not in mapped and "null_text_embed" in mapped
        assert sum(v.numel() for v in mapped.values()) == 633_003_020
