"""Kandinsky 2.2's sampling numerics against diffusers 0.42.1: leading timesteps, DDPMScheduler steps, whole prior and
decoder chains on diffusers' recorded noise.

The chains run our networks and samplers (`sample_ddpm`, classifier-free guidance) directly on the decoder's diffusion
respaced to the shared "leading" timesteps; tests/pipeline/test_kandinsky_pipeline.py drives the same numbers through the stage
seam. References: tests/fixtures/kandinsky.
"""

import pytest
import torch
from fixtures.kandinsky import loader as kf

from dalle2_core.diffusion import GaussianDiffusion, RecordedNoise, classifier_free_guidance, p_sample_step
from dalle2_core.diffusion.samplers import sample_ddpm
from dalle2_core.diffusion.spacing import leading_timesteps, steps_for

R = kf.reference()


def leading_diffusion(decoder, steps: int) -> GaussianDiffusion:
    """The decoder's diffusion over a `steps`-step run of its stage's default spacing (leading, offset steps_offset)."""
    stage = decoder.stage(R["unet.image_embeds"])
    assert (stage.default_spacing, stage.spacing_offset) == ("leading", 1)
    diffusion = decoder.diffusion.respace(steps_for(decoder.diffusion, steps, stage.default_spacing, stage.spacing_offset))
    assert diffusion.timestep_map.tolist() == leading_timesteps(1000, steps, 1)
    return diffusion


def noises(run: str) -> list[torch.Tensor]:
    return [R[k] for k in sorted(k for k in R if k.startswith(f"{run}.noise."))]


@pytest.fixture(scope="module")
def decoder():
    return kf.decoder()


def test_leading_timesteps_are_ddpm_schedulers():
    assert leading_timesteps(1000, 100, 1)[::-1] == R["ddpm.timesteps.100"].tolist()
    assert leading_timesteps(1000, 50, 1)[:3] == [1, 21, 41] and leading_timesteps(1000, 50, 1)[-1] == 981
    assert leading_timesteps(1000, 3) == [0, 333, 666] and leading_timesteps(1000, 999, 1)[-1] == 999
    with pytest.raises(ValueError, match="1000 leading steps with offset 1 reach timestep 1000, past the last one"):
        leading_timesteps(1000, 1000, 1)
    with pytest.raises(ValueError, match="cannot take 1001 steps from 1000 training timesteps"):
        leading_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        leading_timesteps(1000, 10, -1)


@pytest.mark.parametrize("i", [0, 37, 99])
def test_posterior_step_matches_ddpm_scheduler(decoder, i):
    diffusion = leading_diffusion(decoder, 100)
    key = f"ddpm.step.{i}"
    index = 99 - i
    assert int(diffusion.timestep_map[index]) == int(R["ddpm.timesteps.100"][i])
    output = R[f"{key}.model_output"]
    ours, _ = p_sample_step(lambda x, t: output, diffusion, R[f"{key}.sample"], index, generator=RecordedNoise([R[f"{key}.noise"]]))
    # the last step (t = 1) lands on alpha_bar = 1: diffusers adds sqrt(1e-20) · noise there, ours nothing
    assert (ours - R[f"{key}.prev_sample"]).abs().max() < 1e-5


@torch.no_grad()
def test_decoder_chain_matches_kandinsky_v22_pipeline(decoder):
    draws = noises("decoder_run")
    assert len(draws) == 101  # the initial latents, then one noise per step (t = 1 included)
    embeds, negative = R["prior_run.image_embeds"], R["prior_run.negative_image_embeds"]
    model = classifier_free_guidance(decoder, 4.0, uncond={"image_embed": negative}, image_embed=embeds)
    noise = RecordedNoise(draws[1:])
    latents = sample_ddpm(model, leading_diffusion(decoder, 100), draws[0], generator=noise)
    assert noise.remaining == 0
    images = decoder.decode(latents)
    assert R["decoder_run.images"].std() > 0.1
    assert (images - R["decoder_run.images"]).abs().max() < 1e-4


def text_conditioning(prompts):
    clip = kf.text_tower()
    return clip.embed_text(clip.tokenize(prompts))


@torch.no_grad()
@pytest.mark.parametrize("run,negative", [("prior_run", None), ("prior_negative_run", ["blurry", "low quality, watermark"])])
def test_prior_chain_matches_kandinsky_v22_prior_pipeline(run, negative):
    prompts = ["a red cat, 4k photo", "sunset over the sea"]
    # diffusers runs the negative prompts as extra rows, each guided by the negative prompts
    rows = prompts + (negative or [])
    cond = text_conditioning(rows)
    uncond = text_conditioning(negative * 2 if negative else [""] * len(rows))
    draws = noises(run)
    assert len(draws) == 25  # the initial sample, then a noise per step but the last (UnCLIPScheduler draws none at t = 0)
    noise = RecordedNoise([*draws, torch.zeros_like(draws[0])])  # our ddpm draws one at t = 0 and multiplies it by 0
    embeds = kf.prior().sample_embeds(cond.text_embed, cond.text_encodings, cond.text_mask, cond_scale=4.0, steps=25, generator=noise, uncond=uncond)[:, 0]
    assert noise.remaining == 0
    assert (embeds[:2] - R[f"{run}.image_embeds"]).abs().max() < 1e-5
    if negative:
        assert (embeds[2:] - R[f"{run}.negative_image_embeds"]).abs().max() < 1e-5
