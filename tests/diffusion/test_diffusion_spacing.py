"""Spacings are producers of timesteps: diffusers' DDPMScheduler's own lists (written by diffusers), Karras's noise
levels, and every sampler running on what they give."""

import json
from pathlib import Path

import pytest
import torch

from dalle2_core.diffusion import GaussianDiffusion, sample
from dalle2_core.diffusion.spacing import karras_timesteps, spaced_timesteps, steps_for

DIFFUSERS = json.loads((Path(__file__).parents[1] / "fixtures" / "spacing" / "spacing.json").read_text())


@pytest.mark.parametrize("ours,theirs,offset", [("uniform", "linspace", "0"), ("trailing", "trailing", "0"),
                                                ("leading", "leading", "0"), ("leading", "leading", "1")])
def test_spacings_visit_the_timesteps_diffusers_visits(ours, theirs, offset):
    for steps, expected in DIFFUSERS[theirs][offset].items():
        if ours == "leading" and int(offset) and int(steps) == 1000:
            continue  # diffusers runs t = 1000 there, past its table; we refuse it (below)
        if ours == "uniform" and int(steps) == 1:
            assert spaced_timesteps(1000, 1, ours) == [999]  # one step from pure noise (diffusers' linspace gives t = 0)
            continue
        assert spaced_timesteps(1000, int(steps), ours, offset=int(offset)) == sorted(expected), (ours, steps)
    with pytest.raises(ValueError, match=r"1000 leading steps with offset 1 reach timestep 1000.*at most 999 steps"):
        spaced_timesteps(1000, 1000, "leading", offset=1)


def test_karras_timesteps_crowd_where_the_noise_is_low():
    d = GaussianDiffusion.from_schedule("linear", 1000)
    kept = karras_timesteps(d.alphas_cumprod.tolist(), 10)
    assert len(kept) == 10 and kept == sorted(set(kept)) and kept[0] == 0 and kept[-1] == 999
    gaps = [b - a for a, b in zip(kept, kept[1:])]
    assert gaps[0] < gaps[-1]  # eq. 5 with rho 7: small steps at low noise, large ones at high noise
    sigmas = ((1 - d.alphas_cumprod) / d.alphas_cumprod).sqrt()
    assert sigmas[kept[1]] < 0.25 * sigmas[kept[5]]
    # as many distinct steps as asked even where the schedule is coarse
    assert len(set(karras_timesteps(d.alphas_cumprod.tolist(), 500))) == 500


def test_a_count_at_uniform_spacing_is_unchanged_and_every_sampler_runs_any_spacing():
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    assert steps_for(d, 25, "uniform") == 25 and steps_for(d, 25, None) == 25 and steps_for(d, "ddim10", "karras") == "ddim10"
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731  (eps = 0: x_0 = x_t / sqrt(alpha_bar))
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    for spacing in ("uniform", "leading", "trailing", "karras"):
        steps = steps_for(d, 8, spacing, offset=1 if spacing == "leading" else 0)
        assert isinstance(steps, int) if spacing == "uniform" else len(steps) == 8
        for sampler in ("ddpm", "ddim", "dpmpp", "dpmpp_sde"):
            x = sample(model, d, noise, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1))
            assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="unknown spacing 'cosine'; accepted: uniform, leading, trailing, karras"):
        steps_for(d, 8, "cosine")
