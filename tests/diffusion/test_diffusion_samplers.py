"""Samplers with exact denoisers: recovery of x0, reproducibility, respacing, hooks and errors."""


import pytest
import torch

from dalle2_core.diffusion import GaussianDiffusion, sample, space_timesteps
from dalle2_core.diffusion.guidance import static_clamp

SAMPLERS = ["ddpm", "ddim", "dpmpp", "dpmpp_sde"]


def oracle(base: GaussianDiffusion, x0: torch.Tensor, learned_variance=False):
    """A model that knows x0: returns the exact target for x_t at *training* timestep t."""

    def model(x_t, t):
        a = base.alphas_cumprod[t.cpu()].to(x_t).reshape(-1, *((1,) * (x_t.ndim - 1)))
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"eps": eps, "x0": x0.expand_as(x_t), "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[base.objective]
        return torch.cat([out, torch.zeros_like(out)], dim=1) if learned_variance else out

    return model


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1000, 50, 10, 3])
def test_an_oracle_recovers_x0(objective, sampler, steps):
    base = GaussianDiffusion.from_schedule("cosine", 1000, objective=objective)
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    out = sample(oracle(base, x0), base, noise, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1))
    assert (out - x0).abs().max().item() < 1e-6


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_learned_variance_oracle_in_float32_embedding_space(sampler):
    """Embeddings (b, d), float32, learned variance channels, linear schedule, no clamping."""
    base = GaussianDiffusion.from_schedule("linear", 1000, objective="v", learned_variance=True)
    torch.manual_seed(2)
    x0 = torch.randn(3, 16) * 4  # well outside [-1, 1]: nothing may clamp it
    out = sample(oracle(base, x0, learned_variance=True), base, torch.randn(3, 16), sampler=sampler, steps=25)
    assert out.dtype == torch.float32
    assert (out - x0).abs().max().item() < 1e-4


def gaussian_data_eps_model(base, mean, std):
    """The exact eps-predictor when x0 ~ N(mean, std²): E[x0 | x_t] is linear in x_t."""

    def model(x_t, t):
        a = base.alphas_cumprod[t.cpu()].to(x_t).reshape(-1, 1)
        sqrt_a, var = a.sqrt(), 1 - a
        x0 = mean + sqrt_a * std**2 / (a * std**2 + var) * (x_t - sqrt_a * mean)
        return (x_t - sqrt_a * x0) / var.sqrt()

    return model


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", None), ("ddim", None), ("dpmpp_sde", None), ("dpmpp_sde", 25)])
def test_samples_follow_the_data_distribution(sampler, steps):
    """Exact stochastic steps (ancestral, eta = 1, the SDE solver) sample N(mean, std²) itself; the
    second-order SDE solver does so in 25 steps too (DDPM at 25 steps: std 0.25 for 0.3)."""
    base = GaussianDiffusion.from_schedule("cosine", 1000)
    mean, std = 0.5, 0.3
    noise = torch.randn(4000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = sample(gaussian_data_eps_model(base, mean, std), base, noise, sampler=sampler, eta=float(sampler == "ddim"),
                 steps=steps, generator=torch.Generator().manual_seed(4))
    assert out.mean().item() == pytest.approx(mean, abs=0.02)
    assert out.std().item() == pytest.approx(std, rel=0.05)


def ode_error(sampler, steps, mean=0.5, std=0.3):
    """Max distance to the exact probability-flow map, which for Gaussian data is affine in x_T."""
    base = GaussianDiffusion.from_schedule("cosine", 1000)
    noise = torch.randn(256, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    spaced = base.respace(steps)
    a_T, a_0 = spaced.alphas_cumprod[-1], spaced.alphas_cumprod[0]
    # the ODE keeps each sample's quantile: carry it to the last level, then take E[x0 | x] there
    z = (noise - a_T.sqrt() * mean) / (a_T * std**2 + 1 - a_T).sqrt()
    x_last = a_0.sqrt() * mean + (a_0 * std**2 + 1 - a_0).sqrt() * z
    expected = mean + a_0.sqrt() * std**2 / (a_0 * std**2 + 1 - a_0) * (x_last - a_0.sqrt() * mean)
    out = sample(gaussian_data_eps_model(base, mean, std), base, noise, sampler=sampler, steps=steps)
    return (out - expected).abs().max().item()


def test_ode_samplers_converge_at_their_order():
    ddim_40, ddim_80 = ode_error("ddim", 40), ode_error("ddim", 80)
    assert 1.8 < ddim_40 / ddim_80 < 2.2  # first order
    assert 0.05 < ddim_40 < 0.08
    # second order (with first-order ends) is an order of magnitude closer at the same cost
    assert ode_error("dpmpp", 20) < 0.05 and ode_error("dpmpp", 40) < 0.005


def test_ddim_eta0_is_deterministic_and_eta1_uses_noise():
    base = GaussianDiffusion.from_schedule("cosine", 1000)
    model = gaussian_data_eps_model(base, 0.0, 0.5)
    noise = torch.randn(8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a = sample(model, base, noise, sampler="ddim", steps=20)
    b = sample(model, base, noise.clone(), sampler="ddim", steps=20)
    assert torch.equal(a, b)
    c = sample(model, base, noise, sampler="ddim", steps=20, eta=1.0, generator=torch.Generator().manual_seed(6))
    d = sample(model, base, noise, sampler="ddim", steps=20, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert (c - a).abs().max().item() > 1e-2 and (c - d).abs().max().item() > 1e-2


def test_ddim_with_eta1_is_ddpm():
    """Song et al. 2021 §4.1: sigma = sqrt(beta~) turns DDIM into the DDPM ancestral sampler."""
    base = GaussianDiffusion.from_schedule("linear", 1000)
    model = gaussian_data_eps_model(base, 0.2, 0.5)
    noise = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    ddpm = sample(model, base, noise, sampler="ddpm", steps=30, generator=torch.Generator().manual_seed(9))
    ddim = sample(model, base, noise, sampler="ddim", steps=30, eta=1.0, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(ddpm, ddim, atol=1e-10)


def test_sde_solver_is_ddpm_at_first_order_and_uses_its_generator():
    """Over 3 steps every SDE-DPM-Solver++ step is first order (no history yet, then the final two),
    and a first-order step is the DDPM ancestral step: same noise, same samples. With more steps the
    second-order steps make it differ."""
    base = GaussianDiffusion.from_schedule("linear", 1000)
    model = gaussian_data_eps_model(base, 0.2, 0.5)
    noise = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def run(sampler, steps, seed=9):
        return sample(model, base, noise, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed))

    assert torch.allclose(run("ddpm", 3), run("dpmpp_sde", 3), atol=1e-12)
    assert (run("ddpm", 10) - run("dpmpp_sde", 10)).abs().max().item() > 1e-3
    assert torch.equal(run("dpmpp_sde", 10), run("dpmpp_sde", 10))
    assert (run("dpmpp_sde", 10) - run("dpmpp_sde", 10, seed=10)).abs().max().item() > 1e-2


def test_generator_makes_ddpm_reproducible():
    base = GaussianDiffusion.from_schedule("cosine", 100)
    model = gaussian_data_eps_model(base, 0.0, 1.0)
    noise = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    runs = [sample(model, base, noise, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_respacing_keeps_alphas_cumprod_and_maps_timesteps():
    base = GaussianDiffusion.from_schedule("cosine", 1000, objective="v")
    spaced = base.respace(10)
    kept = list(range(0, 1000, 111))
    assert spaced.timestep_map.tolist() == kept
    assert torch.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert spaced.objective == "v" and base.respace(1000) is base
    seen = []
    sample(lambda x, t: seen.append(t.tolist()) or torch.zeros_like(x), base, torch.zeros(2, 4), steps=10)
    assert seen == [[t, t] for t in reversed(kept)]
    # respacing a respaced diffusion composes the maps
    assert spaced.respace(4).timestep_map.tolist() == [0, 333, 666, 999]


def test_space_timesteps_strings():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(100, 1) == [99]
    kept = space_timesteps(300, "10,15,20")
    assert len(kept) == 45 and kept[:2] == [0, 11] and kept[9] == 99 and kept[10] == 100 and kept[-1] == 299
    with pytest.raises(ValueError, match="cannot read steps"):
        space_timesteps(100, "fast")


def test_on_step_reports_progress_and_can_replace_x():
    base = GaussianDiffusion.from_schedule("cosine", 1000, objective="x0")
    x0 = torch.full((1, 4), 0.25)
    calls = []

    def on_step(i, total, x):
        calls.append((i, total))
        if i == total - 1:
            return torch.zeros_like(x)

    out = sample(oracle(base, x0), base, torch.randn(1, 4), sampler="dpmpp", steps=5, on_step=on_step)
    assert calls == [(i, 5) for i in range(5)] and torch.equal(out, torch.zeros(1, 4))


def test_static_clamp_as_denoise_fn():
    base = GaussianDiffusion.from_schedule("cosine", 1000, objective="x0")
    x0 = torch.full((1, 3, 2, 2), 3.0)
    out = sample(oracle(base, x0), base, torch.randn(1, 3, 2, 2), sampler="ddim", steps=5, denoise_fn=static_clamp)
    assert torch.allclose(out, torch.ones_like(out))


def test_bad_sampler_arguments():
    base = GaussianDiffusion.from_schedule("cosine", 100)
    model, noise = lambda x, t: torch.zeros_like(x), torch.zeros(1, 2)
    with pytest.raises(ValueError, match="accepted: ddpm, ddim, dpmpp, dpmpp_sde"):
        sample(model, base, noise, sampler="euler")
    for steps in (0, 101):
        with pytest.raises(ValueError, match="between 1 and the 100 training timesteps"):
            sample(model, base, noise, steps=steps)
    with pytest.raises(ValueError, match="ddim sampler only"):
        sample(model, base, noise, sampler="ddpm", eta=1.0)
    with pytest.raises(ValueError, match=r"model output has shape \(1, 3\)"):
        sample(lambda x, t: torch.zeros(1, 3), base, noise, steps=2)
