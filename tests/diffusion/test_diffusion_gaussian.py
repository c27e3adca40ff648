"""GaussianDiffusion: forward process, posterior, parameterisations, learned variance and losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_core.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, normal_kl


def diffusion(**kw):
    return GaussianDiffusion.from_schedule("cosine", 100, **kw)


def closed_form(diff, t):
    """alpha_t, alpha_bar_t, alpha_bar_{t-1} as Python floats, straight from the betas."""
    betas = diff.betas.tolist()
    alpha_bar = math.prod(1 - b for b in betas[: t + 1])
    alpha_bar_prev = math.prod(1 - b for b in betas[:t])
    return 1 - betas[t], alpha_bar, alpha_bar_prev


def test_q_sample_is_ho_eq_4():
    diff = diffusion()
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 70])
    x_t = diff.q_sample(x0, t, noise)
    for i in range(2):
        _, a, _ = closed_form(diff, int(t[i]))
        assert torch.allclose(x_t[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-12)


def test_eps_x0_v_round_trips_in_float64():
    diff = diffusion()
    torch.manual_seed(1)
    x0, eps = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 99])
    x_t = diff.q_sample(x0, t, eps)
    v = diff.predict_v(x0, t, eps)
    assert torch.allclose(diff.predict_start_from_noise(x_t, t, eps), x0, atol=1e-6)
    assert torch.allclose(diff.predict_noise_from_start(x_t, t, x0), eps, atol=1e-6)
    assert torch.allclose(diff.predict_start_from_v(x_t, t, v), x0, atol=1e-6)
    assert torch.allclose(diff.predict_noise_from_v(x_t, t, v), eps, atol=1e-6)
    # v = alpha eps - sigma x0 (Salimans & Ho 2022)
    _, a, _ = closed_form(diff, 50)
    assert torch.allclose(v[2], math.sqrt(a) * eps[2] - math.sqrt(1 - a) * x0[2], atol=1e-12)


def test_posterior_is_ho_eq_6_7_and_gaussian_conditioning():
    diff = diffusion()
    torch.manual_seed(2)
    x0, x_t = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    for t in (1, 40, 99):
        mean, var, log_var = diff.q_posterior(x0, x_t, torch.tensor([t]))
        alpha, a, a_prev = closed_form(diff, t)
        beta = 1 - alpha
        # eq. 7
        expected_mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(alpha) * (1 - a_prev) / (1 - a) * x_t
        expected_var = (1 - a_prev) / (1 - a) * beta
        assert torch.allclose(mean, expected_mean, atol=1e-12)
        assert var[0, 0].item() == pytest.approx(expected_var, rel=1e-10)
        assert log_var[0, 0].item() == pytest.approx(math.log(expected_var), rel=1e-10)
        # the same numbers from Bayes: x_{t-1} ~ N(sqrt(a_prev) x0, 1 - a_prev), x_t = sqrt(alpha) x_{t-1} + sqrt(beta) z
        gain = math.sqrt(alpha) * (1 - a_prev) / (1 - a)
        bayes_mean = math.sqrt(a_prev) * x0 + gain * (x_t - math.sqrt(a) * x0)
        assert torch.allclose(mean, bayes_mean, atol=1e-12)
        assert expected_var == pytest.approx((1 - a_prev) - gain * math.sqrt(alpha) * (1 - a_prev), rel=1e-10)


def test_posterior_log_variance_is_clipped_at_t0_to_the_t1_value():
    diff = diffusion()
    x = torch.zeros(1, 2, dtype=torch.float64)
    _, var0, log_var0 = diff.q_posterior(x, x, torch.tensor([0]))
    _, var1, _ = diff.q_posterior(x, x, torch.tensor([1]))
    assert var0[0, 0].item() == 0.0
    assert log_var0[0, 0].item() == pytest.approx(math.log(var1[0, 0].item()))


def test_q_sample_step_composes_to_q_sample_in_distribution():
    diff = diffusion()
    torch.manual_seed(3)
    x_prev = diff.q_sample(torch.full((20000, 1), 0.5, dtype=torch.float64), torch.full((20000,), 29))
    x_t = diff.q_sample_step(x_prev, torch.full((20000,), 30))
    _, a, _ = closed_form(diff, 30)
    assert x_t.mean().item() == pytest.approx(math.sqrt(a) * 0.5, abs=0.02)
    assert x_t.std().item() == pytest.approx(math.sqrt(1 - a), abs=0.02)


def test_tables_are_cast_to_the_inputs_dtype():
    diff = diffusion()
    x = torch.randn(2, 3, dtype=torch.float32)
    t = torch.tensor([3, 4])
    assert diff.q_sample(x, t).dtype == torch.float32
    assert diff.predict_v(x, t, x).dtype == torch.float32
    assert diff.betas.dtype == torch.float64


def test_learned_variance_interpolates_between_posterior_and_beta():
    diff = diffusion(objective="x0", learned_variance=True)
    x_t = torch.zeros(2, 3, 4, dtype=torch.float64)
    t = torch.tensor([50, 50])
    var_values = torch.stack([torch.full((3, 4), -1.0), torch.full((3, 4), 1.0)]).double()
    out = diff.p_mean_variance(None, x_t, t, output=torch.cat([torch.zeros_like(x_t), var_values], dim=1))
    alpha, a, a_prev = closed_form(diff, 50)
    beta = 1 - alpha
    assert out.log_variance[0, 0, 0].item() == pytest.approx(math.log((1 - a_prev) / (1 - a) * beta))  # frac 0: beta~
    assert out.log_variance[1, 0, 0].item() == pytest.approx(math.log(beta))  # frac 1: beta
    assert out.variance[1, 0, 0].item() == pytest.approx(beta)
    with pytest.raises(ValueError, match=r"expected \(2, 6, 4\)"):
        diff.p_mean_variance(None, x_t, t, output=torch.zeros_like(x_t))


def test_denoise_fn_acts_on_x0_and_eps_follows():
    diff = diffusion(objective="eps")
    x_t = torch.full((1, 4), 3.0, dtype=torch.float64)
    t = torch.tensor([10])
    pred = diff.interpret_output(torch.zeros_like(x_t), x_t, t, denoise_fn=lambda x: x.clamp(-1, 1))
    assert torch.equal(pred.pred_xstart, torch.ones_like(x_t))
    assert torch.allclose(diff.predict_start_from_noise(x_t, t, pred.pred_eps), pred.pred_xstart, atol=1e-12)


def zero_model(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize(
    "loss_type, reference",
    [("l2", lambda n: n**2), ("l1", lambda n: n.abs()), ("huber", lambda n: torch.where(n.abs() < 1, 0.5 * n**2, n.abs() - 0.5))],
)
def test_simple_losses_on_a_zero_model_are_the_noise_statistics(loss_type, reference):
    diff = diffusion()
    torch.manual_seed(4)
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    loss = diff.training_losses(zero_model, x0, torch.tensor([0, 5, 99]), noise=noise, loss_type=loss_type)
    assert loss.shape == (3,)
    assert torch.allclose(loss, reference(noise).mean(dim=(1, 2, 3)), atol=1e-6)


def test_v_objective_targets_v():
    diff = diffusion(objective="v")
    torch.manual_seed(5)
    x0, noise, t = torch.randn(2, 8), torch.randn(2, 8), torch.tensor([20, 80])
    loss = diff.training_losses(zero_model, x0, t, noise=noise)
    assert torch.allclose(loss, diff.predict_v(x0, t, noise).pow(2).mean(dim=1), atol=1e-6)


def test_p2_weighting():
    diff = diffusion()
    torch.manual_seed(6)
    x0, noise, t = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0, 30, 60, 99])
    plain = diff.training_losses(zero_model, x0, t, noise=noise)
    assert torch.equal(diff.training_losses(zero_model, x0, t, noise=noise, p2_gamma=0.0, p2_k=5.0), plain)
    weighted = diff.training_losses(zero_model, x0, t, noise=noise, p2_gamma=1.0, p2_k=1.0)
    alpha_bar = diff.alphas_cumprod[t]
    snr = (alpha_bar / (1 - alpha_bar)).float()
    assert torch.allclose(weighted, plain / (1 + snr), rtol=1e-6)


def test_learned_variance_loss_has_a_nonnegative_vb_that_trains_only_the_variance():
    diff = diffusion(objective="eps", learned_variance=True)
    torch.manual_seed(7)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    weight = torch.randn(6, 3, 1, 1, requires_grad=True)
    model = lambda x, t: F.conv2d(x, weight).tanh()
    t = torch.tensor([0, 1, 50, 99])
    terms = diff.training_loss_terms(model, x0, t, noise=torch.randn_like(x0), vb_weight=1e-3)
    assert bool(torch.isfinite(terms["loss"]).all()) and bool((terms["vb"] >= 0).all())
    assert torch.allclose(terms["loss"], terms["simple"] + 1e-3 * terms["vb"])
    # the vb term reaches only the variance half of the output
    (grad,) = torch.autograd.grad(terms["vb"].sum(), weight)
    assert grad[:3].abs().max().item() == 0.0 and grad[3:].abs().max().item() > 0


def test_vb_is_zero_for_the_exact_posterior():
    """With x0 predicted exactly and frac 0 (variance beta~), KL(q || p) vanishes for t > 0."""
    diff = diffusion(objective="x0", learned_variance=True)
    torch.manual_seed(8)
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    exact = lambda x, t: torch.cat([x0, -torch.ones_like(x0)], dim=1)
    terms = diff.training_loss_terms(exact, x0, torch.tensor([5, 90]))
    assert terms["vb"].abs().max().item() < 1e-12 and terms["simple"].abs().max().item() == 0.0


def test_normal_kl_matches_torch_distributions():
    torch.manual_seed(9)
    m1, m2, lv1, lv2 = torch.randn(4, 10, dtype=torch.float64).unbind(0)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, atol=1e-12)


def test_discretized_likelihood_sums_to_one_over_256_values():
    values = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.0, -3.0), (0.9, -1.0), (-0.3, 0.5)]:
        logp = discretized_gaussian_log_likelihood(
            values, torch.full_like(values, mean), torch.full_like(values, log_scale)
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_bad_arguments_name_what_is_accepted():
    with pytest.raises(ValueError, match="accepted: eps, x0, v"):
        diffusion(objective="noise")
    with pytest.raises(ValueError, match="accepted: l1, l2, huber"):
        diffusion().training_losses(zero_model, torch.zeros(1, 2), torch.tensor([0]), loss_type="mse")
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        GaussianDiffusion(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="out of range"):
        diffusion().timesteps(100, torch.zeros(1, 2))
