"""Beta schedules against their closed forms and recorded outside reference values."""

import math

import pytest
import torch

from dalle2_core.diffusion import BETA_SCHEDULES, beta_schedule

# alphas_cumprod at t = 0, 499, 999 for T = 1000, from openai/guided-diffusion's
# `get_named_beta_schedule` formulas evaluated with numpy float64 (linear: np.linspace(1e-4, 0.02);
# cosine: betas_for_alpha_bar with max_beta 0.999). dalle2-pytorch 1.15.6's `linear_beta_schedule`
# and `cosine_beta_schedule` agree with them to 1e-15 relative.
REFERENCE_ALPHAS_CUMPROD = {
    "linear": {0: 0.9999, 499: 0.07858724288177824, 999: 4.035829765375676e-05},
    "cosine": {0: 0.999958715775178, 499: 0.4938435904406382, 999: 2.4287669070348567e-09},
}


@pytest.mark.parametrize("name", sorted(REFERENCE_ALPHAS_CUMPROD))
def test_alphas_cumprod_match_the_reference_values(name):
    alphas_cumprod = torch.cumprod(1 - beta_schedule(name, 1000), dim=0)
    for t, expected in REFERENCE_ALPHAS_CUMPROD[name].items():
        assert alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("timesteps", [10, 1000])
def test_cosine_alphas_cumprod_is_the_normalised_cos_squared(timesteps):
    s = 0.008
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = torch.cumprod(1 - beta_schedule("cosine", timesteps), dim=0)
    # the clip at 0.999 only touches the final beta
    for t in range(timesteps - 1):
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert beta_schedule("cosine", timesteps)[-1].item() == pytest.approx(min(1 - f(timesteps) / f(timesteps - 1), 0.999))


def test_linear_endpoints_scale_with_the_step_count():
    assert beta_schedule("linear", 1000)[[0, -1]].tolist() == pytest.approx([1e-4, 0.02])
    assert beta_schedule("linear", 250)[[0, -1]].tolist() == pytest.approx([4e-4, 0.08])
    steps = beta_schedule("linear", 1000).diff()
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 999))


def test_quadratic_is_linear_in_sqrt_beta_and_sigmoid_is_centred():
    root = beta_schedule("quadratic", 1000).sqrt()
    assert root[[0, -1]].tolist() == pytest.approx([0.01, 0.02**0.5])
    assert torch.allclose(root.diff(), torch.full((999,), (0.02**0.5 - 0.01) / 999, dtype=torch.float64))
    sig = beta_schedule("sigmoid", 1000)
    assert sig[0].item() == pytest.approx(1e-4 + (0.02 - 1e-4) / (1 + math.exp(6)))
    # symmetric about the middle of the range
    assert torch.allclose(sig + sig.flip(0), torch.full_like(sig, 1e-4 + 0.02))


def test_jsd_is_one_over_remaining_steps():
    assert beta_schedule("jsd", 4).tolist() == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1])


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
def test_every_schedule_is_float64_in_range(name):
    betas = beta_schedule(name, 100)
    assert betas.dtype == torch.float64 and betas.shape == (100,)
    assert bool(((betas > 0) & (betas <= 1)).all())


def test_bad_names_and_step_counts_are_rejected():
    with pytest.raises(ValueError, match="accepted: cosine, linear, quadratic, jsd, sigmoid"):
        beta_schedule("cosin", 10)
    with pytest.raises(ValueError, match="positive int"):
        beta_schedule("linear", 0)
