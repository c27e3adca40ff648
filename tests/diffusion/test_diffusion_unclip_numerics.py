"""The diffusion options Karlo's UnCLIPScheduler needs: float32 schedule, respacing, unclipped log-variance,
x_0 clamp value, explicit unconditional conditions, noise sources."""

import math

import pytest
import torch

from dalle2_core.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    RecordedNoise,
    classifier_free_guidance,
    p_sample_step,
    space_timesteps,
    static_clamping,
)
from dalle2_core.diffusion.schedules import cosine_beta_schedule
from dalle2_core.helpers import randn


def unclip(**kw) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 1000, float32_schedule=True, posterior_log_variance="unclipped", **kw)


def test_float32_schedule_is_a_float32_cumprod_of_float32_betas():
    betas32 = cosine_beta_schedule(1000).to(torch.float32)
    d = unclip()
    assert torch.equal(d.betas, betas32.double())
    assert torch.equal(d.alphas_cumprod, torch.cumprod(1 - betas32, dim=0).double())
    exact = GaussianDiffusion.from_schedule("cosine", 1000)
    assert exact.alphas_cumprod.dtype == torch.float64
    relative = (d.alphas_cumprod / exact.alphas_cumprod - 1).abs().max().item()
    assert 1e-6 < relative < 1e-4  # float32 accumulation drifts by ~1e-5 over 1000 steps


@pytest.mark.parametrize("n", [*range(2, 40), 50, 64, 100, 250, 500, 999, 1000])
def test_respacing_keeps_diffusers_timesteps(n):
    # UnCLIPScheduler.set_timesteps: round(arange(n) * 999 / (n - 1)), reversed (round half to even)
    ratio = 999 / (n - 1)
    assert space_timesteps(1000, n) == [round(i * ratio) for i in range(n)]
    assert unclip().respace(n).timestep_map.tolist() == [round(i * ratio) for i in range(n)]


def test_float32_respacing_recomputes_beta_as_unclip_scheduler_does():
    full = unclip()
    d = full.respace(25)
    kept = d.timestep_map.tolist()
    ac = full.alphas_cumprod.float()
    for i in (1, 5, 24):
        expected = 1 - ac[kept[i]] / ac[kept[i - 1]]  # float32 arithmetic
        assert d.betas[i].item() == expected.item()
    # onto the timestep just before (t = 0 -> "-1") the schedule's own beta is kept, as diffusers does
    assert d.betas[0].item() == full.betas[0].item()
    coef = d.lookup("posterior_mean_coef1", torch.tensor([0]), torch.zeros(1)).item()
    assert coef == pytest.approx(0.99947235, abs=1e-7)  # beta_0 / (1 - alpha_bar_0) in float32 tables
    assert GaussianDiffusion.from_schedule("cosine", 1000).respace(25).lookup(
        "posterior_mean_coef1", torch.tensor([0]), torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(1.0, abs=1e-12)


def test_respacing_a_float32_schedule_twice_composes():
    d = unclip().respace(50).respace(10)
    assert d.float32_schedule and d.num_timesteps == 10 and d.timestep_map[-1] == 999


def test_unclipped_log_variance_differs_from_clipped_only_at_t0():
    clipped = GaussianDiffusion.from_schedule("cosine", 1000).respace(25)
    unclipped = GaussianDiffusion.from_schedule("cosine", 1000, posterior_log_variance="unclipped").respace(25)
    t = torch.arange(25)
    a = clipped.lookup("posterior_log_variance", t, torch.zeros(25, dtype=torch.float64)).flatten()
    b = unclipped.lookup("posterior_log_variance", t, torch.zeros(25, dtype=torch.float64)).flatten()
    assert torch.equal(a[1:], b[1:])
    assert b[0].item() == pytest.approx(math.log(1e-20)) and a[0].item() == pytest.approx(a[1].item())


def test_learned_range_minimum_is_the_unclipped_posterior_log_variance():
    d = unclip(learned_variance=True).respace(25)
    x = torch.zeros(1, 2)
    t = torch.tensor([10])
    beta = d.lookup("betas", t, x)
    var = beta * (1 - d.lookup("alphas_cumprod_prev", t, x)) / (1 - d.lookup("alphas_cumprod", t, x))
    for frac_value, expected in ((-1.0, var.log()), (1.0, beta.log())):
        got = d.learned_log_variance(torch.full((1, 1), frac_value), x[:, :1], t)
        assert torch.allclose(got, expected, rtol=1e-6)
    # at t = 0 the minimum is finite (log 1e-20), so frac = 1 gives no NaN there either
    assert torch.isfinite(d.learned_log_variance(torch.ones(1, 1), x[:, :1], torch.tensor([0]))).all()


def test_the_last_ddpm_step_adds_no_noise_whatever_the_variance():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    out = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    results = []
    for lv in ("clipped", "unclipped"):
        d = GaussianDiffusion.from_schedule("cosine", 1000, learned_variance=True, posterior_log_variance=lv).respace(5)
        results.append(p_sample_step(lambda x, t: out, d, x, 0, generator=torch.Generator().manual_seed(2))[0])
    assert torch.equal(results[0], results[1]) and torch.isfinite(results[0]).all()


def test_static_clamping_takes_a_limit():
    x = torch.tensor([-12.0, -4.0, 0.5, 7.0])
    assert static_clamping(5.0)(x).tolist() == [-5.0, -4.0, 0.5, 5.0]
    assert static_clamping(10)(x).tolist() == [-10.0, -4.0, 0.5, 7.0]
    for bad in (0, -1.0, float("nan"), "five"):
        with pytest.raises(ValueError, match="clamp limit must be a positive"):
            static_clamping(bad)


def test_diffusion_config_builds_the_diffusion_and_its_clamp():
    config = DiffusionConfig(objective="x0", float32_schedule=True, posterior_log_variance="unclipped", x0_clamp=5.0, sample_steps=25)
    d = config.to_diffusion()
    assert (d.objective, d.float32_schedule, d.posterior_log_variance, d.num_timesteps) == ("x0", True, "unclipped", 1000)
    assert config.denoise_fn()(torch.tensor([9.0])).item() == 5.0 and DiffusionConfig().denoise_fn() is None
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="x0_clamp must be None or a positive finite number, got 0"):
        DiffusionConfig(x0_clamp=0)
    with pytest.raises(ValueError, match="unknown posterior_log_variance 'floored'; accepted: clipped, unclipped"):
        DiffusionConfig(posterior_log_variance="floored")


def test_tables_stay_on_cpu_when_built_under_a_meta_device():
    with torch.device("meta"):
        d = unclip().respace(7)
    assert d.betas.device.type == "cpu" and d.timestep_map.device.type == "cpu"


class Recorder:
    """A network that records its keywords and returns x + text (cond) so the branches differ."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, **kw):
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
        return x + kw["text"]


def test_explicit_uncond_is_the_second_half_of_one_batched_forward():
    net = Recorder()
    x, t = torch.ones(2, 3), torch.tensor([5, 5])
    cond, uncond = torch.full((2, 3), 2.0), torch.full((2, 3), -1.0)
    out = classifier_free_guidance(net, 3.0, uncond={"text": uncond, "tag": "a"}, text=cond, tag="a")(x, t)
    (call,) = net.calls
    assert set(call) == {"text", "tag"}  # no cond_drop_mask added
    assert torch.equal(call["text"], torch.cat([cond, uncond]))
    # uncond + (cond - uncond) * 3 = (1 - 1) + (3 - 0) * 3
    assert torch.equal(out, torch.full((2, 3), 9.0))


def test_explicit_uncond_concatenates_masks_present_in_both():
    net = Recorder()
    m1, m2 = torch.tensor([False, False]), torch.tensor([True, True])
    classifier_free_guidance(net, 2.0, uncond={"text": torch.zeros(2, 1), "cond_drop_mask": m2}, text=torch.ones(2, 1), cond_drop_mask=m1)(
        torch.zeros(2, 1), torch.tensor([1, 1]))
    assert net.calls[0]["cond_drop_mask"].tolist() == [False, False, True, True]


def test_explicit_uncond_with_encode_runs_encode_once_on_both_halves():
    net, seen = Recorder(), []

    def encode(**kw):
        seen.append(kw["raw"].clone())
        return {"text": kw["raw"] * 10}

    model = classifier_free_guidance(net, 2.0, encode=encode, uncond={"raw": torch.zeros(1, 1)}, raw=torch.ones(1, 1))
    for _ in range(3):
        model(torch.zeros(1, 1), torch.tensor([1]))
    assert len(seen) == 1 and seen[0].flatten().tolist() == [1.0, 0.0]
    assert net.calls[0]["text"].flatten().tolist() == [10.0, 0.0]


def test_cond_scale_one_with_uncond_runs_the_conditional_branch_only():
    net = Recorder()
    classifier_free_guidance(net, 1.0, uncond={"text": torch.zeros(2, 1)}, text=torch.ones(2, 1))(torch.zeros(2, 1), torch.tensor([1, 1]))
    assert net.calls[0]["text"].flatten().tolist() == [1.0, 1.0] and "cond_drop_mask" not in net.calls[0]


@pytest.mark.parametrize(
    "uncond,message",
    [
        ({"other": torch.zeros(2, 1)}, r"uncond must carry the same conditions as cond; cond has \['text'\], uncond has \['other'\]"),
        ({"text": torch.zeros(1, 1)}, r"uncond\['text'\] has shape \(1, 1\); cond\['text'\] has \(2, 1\)"),
        ({"text": 3}, r"uncond\['text'\] must be a tensor exactly when cond\['text'\] is one"),
    ],
)
def test_explicit_uncond_must_match_cond(uncond, message):
    with pytest.raises(ValueError, match=message):
        classifier_free_guidance(Recorder(), 2.0, uncond=uncond, text=torch.ones(2, 1))


def test_cond_drop_mask_is_not_accepted_without_uncond():
    with pytest.raises(ValueError, match="cond_drop_mask is set by classifier_free_guidance itself"):
        classifier_free_guidance(Recorder(), 2.0, cond_drop_mask=torch.zeros(2, dtype=torch.bool))


def test_recorded_noise_replays_draws_through_helpers_randn():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    noise = RecordedNoise([a, b])
    assert torch.equal(randn((2, 3), generator=noise), a)
    assert torch.equal(randn((2, 3), generator=noise, dtype=torch.float64), b.double())
    with pytest.raises(ValueError, match=r"recorded noise exhausted: draw 3 asked for \(2, 3\), only 2 recorded"):
        randn((2, 3), generator=noise)
    with pytest.raises(ValueError, match=r"recorded draw 1 has shape \(2, 3\); the sampler asked for \(4,\)"):
        randn((4,), generator=RecordedNoise([a]))


def test_noise_sources_mix_with_generators_per_sample():
    row = torch.arange(3.0)[None]
    out = randn((2, 3), generator=[RecordedNoise([row]), torch.Generator().manual_seed(0)])
    assert torch.equal(out[0], row[0]) and torch.equal(out[1], torch.randn(1, 3, generator=torch.Generator().manual_seed(0))[0])
    with pytest.raises(TypeError, match="generator must be a torch.Generator, a list of them, or an object with a randn"):
        randn((2, 3), generator=42)
