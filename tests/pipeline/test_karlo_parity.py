"""Karlo against diffusers 0.33.1: each network's forward, single UnCLIPScheduler steps, and the whole chain.

The references are diffusers' outputs on a tiny random Karlo (tests/fixtures/karlo/make_fixtures.py);
diffusers itself is not needed here.
"""

import dataclasses

import pytest
import torch
from fixtures.karlo import loader as kf

from dalle2_core.conditioning import TextCondition
from dalle2_core.diffusion import GaussianDiffusion, RecordedNoise, p_sample_step

R = kf.reference()
EMPTY = TextCondition(R["text.empty_text_embed"], R["text.empty_text_encodings"], R["text.empty_text_mask"])
TEXT = (R["text.text_embed"], R["text.text_encodings"], R["text.text_mask"])


def test_prior_transformer_matches_diffusers():
    out = kf.prior().net(R["prior.x"], R["prior.t"], text_embed=TEXT[0], text_encodings=TEXT[1], text_mask=TEXT[2])
    assert R["prior.out"].abs().max() > 0.1
    assert (out - R["prior.out"]).abs().max() < 1e-5


def test_text_proj_matches_diffusers():
    out = kf.text_proj()(R["text_proj.image_embed"], *TEXT)
    assert (out["context"] - R["text_proj.context"]).abs().max() < 1e-5
    assert (out["added_time_embed"] - R["text_proj.added_time_embed"]).abs().max() < 1e-5
    # 4 image tokens always attended, then the text mask
    assert out["context_mask"].tolist() == [[True] * 9, [True] * 7 + [False] * 2]


def test_decoder_unet_matches_diffusers():
    out = kf.unet("decoder")(
        R["decoder.x"], R["decoder.t"], context=R["decoder.context"], context_mask=R["decoder.context_mask"],
        added_time_embed=R["decoder.added_time_embed"],
    )
    assert out.shape == (2, 6, 8, 8) and R["decoder.out"].abs().max() > 0.1
    assert (out - R["decoder.out"]).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["super_res_first", "super_res_last"])
def test_super_res_unets_match_diffusers(name):
    out = kf.unet(name)(R["super_res.x"], R["super_res.t"])
    assert R[f"{name}.out"].abs().max() > 0.1
    assert (out - R[f"{name}.out"]).abs().max() < 1e-5


STEPS = {"prior": ("prior_scheduler", 25), "decoder": ("decoder_scheduler", 25), "super_res": ("super_res_scheduler", 7)}


def ours_step(stage: str, i: int, float32_schedule: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Our ddpm step on the respaced diffusion, fed diffusers' model output and noise; (ours, diffusers')."""
    scheduler, n = STEPS[stage]
    config = kf.dc.unclip_scheduler_config(kf.config(scheduler))
    diffusion = GaussianDiffusion.from_schedule(
        "cosine", 1000, objective=config.objective, learned_variance=config.learned_variance,
        float32_schedule=float32_schedule, posterior_log_variance="unclipped",
    ).respace(n)
    key = f"step.{stage}.{i}"
    index = n - 1 - i
    assert int(diffusion.timestep_map[index]) == int(R[f"{key}.t"])
    # diffusers draws no noise at t = 0; ours draws one and multiplies it by zero
    noise = R[f"{key}.noise"] if R[f"{key}.noise"].numel() else torch.zeros_like(R[f"{key}.sample"])
    output = R[f"{key}.model_output"]
    prev, _ = p_sample_step(lambda x, t: output, diffusion, R[f"{key}.sample"], index,
                            denoise_fn=config.denoise_fn(), generator=RecordedNoise([noise]))
    return prev, R[f"{key}.prev_sample"]


@pytest.mark.parametrize("stage,i", [(s, i) for s, (_, n) in STEPS.items() for i in (0, 1, n - 1)])
def test_posterior_step_matches_unclip_scheduler(stage, i):
    ours, theirs = ours_step(stage, i)
    assert (ours - theirs).abs().max() < 1e-5


def test_the_float32_schedule_is_what_makes_the_last_step_match():
    # diffusers' float32 tables give the t = 0 step an x_0 coefficient of beta_0 / (1 - alpha_bar_0) = 0.99947
    ours, theirs = ours_step("decoder", 24, float32_schedule=False)
    assert (ours - theirs).abs().max() > 1e-4
    assert theirs.abs().max() == pytest.approx(0.99947, abs=1e-5)


def recorded_chain_noise() -> RecordedNoise:
    """diffusers' draws in order (prior, decoder, super-res: latents then each step's noise), with a zero
    draw after each stage where our ddpm draws the t = 0 noise that it multiplies by zero."""
    draws = [R[k] for k in sorted(k for k in R if k.startswith("chain.noise."))]
    assert len(draws) == 57  # 1 + 24, 1 + 24, 1 + 6
    sequence = []
    for start, stop in ((0, 25), (25, 50), (50, 57)):
        sequence += draws[start:stop] + [torch.zeros_like(draws[start])]
    return RecordedNoise(sequence)


def test_prior_decoder_super_res_chain_matches_unclip_pipeline():
    noise = recorded_chain_noise()
    embeds = kf.prior().sample_embeds(*TEXT, num_samples_per_batch=1, cond_scale=4.0, steps=25, generator=noise, uncond=EMPTY)
    assert embeds.shape == (2, 1, 8)
    assert (embeds[:, 0] - R["chain.image_embed"]).abs().max() < 1e-5

    cascade = kf.cascade()
    stage_inputs = {}
    super_res_stage = cascade.super_res_stage

    def spy():  # records the low-resolution input the super-resolution stage takes from the decoder stage
        stage = super_res_stage()

        def lowres(previous, generator):
            stage_inputs.update(stage.lowres(previous, generator))
            return {"lowres": stage_inputs["lowres"]}

        return dataclasses.replace(stage, lowres=lowres)

    cascade.super_res_stage = spy
    images = cascade.sample(embeds[:, 0], TEXT[1], TEXT[2], text_embed=TEXT[0], cond_scale=(8.0, 1.0), steps=(25, 7),
                            generator=noise, uncond=EMPTY)
    assert noise.remaining == 0
    assert (stage_inputs["lowres"] - R["chain.upscaled"]).abs().max() < 1e-4
    assert images.shape == (2, 3, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0
    assert (images - R["chain.images"]).abs().max() < 1e-4
    assert R["chain.images"].std() > 0.3  # the reference is an image, not a constant
