"""Samplers: free functions with one signature `(model, diffusion, x, *, denoise_fn, generator, on_step, **opts)`.

Each runs every step of the diffusion it is given (respace first for fewer steps; `sample` does it)
and returns x_0. `model(x_t, t)` is a model function (see `guidance.classifier_free_guidance`);
`denoise_fn(x_0) -> x_0` post-processes predicted x_0 (None: untouched, as in embedding space).
`on_step(i, total, x)` runs after step i (0-based); x then sits at diffusion index total - 2 - i
(the last step gives x_0). If it returns a tensor, that tensor replaces x (RePaint-style inpainting).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..choices import SAMPLER_NAMES
from ..helpers import exists, randn
from .gaussian import DenoiseFn, GaussianDiffusion, ModelFn

OnStep = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Noise shaped like `x` from one generator or one per sample (see `helpers.randn`)."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _after_step(on_step: OnStep | None, i: int, total: int, x: torch.Tensor) -> torch.Tensor:
    if not exists(on_step):
        return x
    replaced = on_step(i, total, x)
    return x if replaced is None else replaced


def p_sample_step(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    t: int | torch.Tensor,
    *,
    denoise_fn: DenoiseFn | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM ancestral step (Ho et al. 2020 Alg. 2): x_{t-1} ~ p(x_{t-1} | x_t); returns (x_{t-1}, pred_xstart).

    On a respaced float32-schedule diffusion with the unclipped log-variance and a static x_0 clamp this
    is diffusers' `UnCLIPScheduler.step` (Karlo) to float32 rounding, with one difference: the noise is
    drawn at every step, t = 0 included (and multiplied by 0 there), where UnCLIPScheduler draws none at
    t = 0, so a shared generator is one draw further along after each chain.
    """
    t = diffusion.timesteps(t, x)
    out = diffusion.p_mean_variance(model, x, t, denoise_fn=denoise_fn)
    # no noise at t = 0: the chain ends at the mean
    nonzero = (t != 0).to(x.dtype).reshape(-1, *((1,) * (x.ndim - 1)))  # (b, 1, ..., 1)
    return out.mean + nonzero * torch.exp(0.5 * out.log_variance) * randn_like(x, generator), out.pred_xstart


def ddim_step(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    t: int | torch.Tensor,
    *,
    eta: float = 0.0,
    denoise_fn: DenoiseFn | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM step (Song et al. 2021 eq. 12, sigma from eq. 16 scaled by eta); returns (x_{t-1}, pred_xstart)."""
    t = diffusion.timesteps(t, x)
    pred = diffusion.model_predictions(model, x, t, denoise_fn=denoise_fn)
    alpha_bar = diffusion.lookup("alphas_cumprod", t, x)
    alpha_bar_prev = diffusion.lookup("alphas_cumprod_prev", t, x)
    x_prev = alpha_bar_prev.sqrt() * pred.pred_xstart
    if eta == 0:
        return x_prev + (1 - alpha_bar_prev).sqrt() * pred.pred_eps, pred.pred_xstart
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    # rounding can push 1 - a_prev - sigma² a hair below zero at eta = 1
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * pred.pred_eps
    return x_prev + direction + sigma * randn_like(x, generator), pred.pred_xstart


@torch.no_grad()
def sample_ddpm(model, diffusion, x, *, denoise_fn=None, generator=None, on_step=None):
    """Ancestral sampling over every step of `diffusion` (posterior variance, or the learned one)."""
    total = diffusion.num_timesteps
    for i, index in enumerate(reversed(range(total))):
        x, _ = p_sample_step(model, diffusion, x, index, denoise_fn=denoise_fn, generator=generator)
        x = _after_step(on_step, i, total, x)
    return x


@torch.no_grad()
def sample_ddim(model, diffusion, x, *, denoise_fn=None, generator=None, on_step=None, eta: float = 0.0):
    """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 matches DDPM's marginals."""
    if not 0.0 <= eta:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    total = diffusion.num_timesteps
    for i, index in enumerate(reversed(range(total))):
        x, _ = ddim_step(model, diffusion, x, index, eta=eta, denoise_fn=denoise_fn, generator=generator)
        x = _after_step(on_step, i, total, x)
    return x


def _log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def _dpmpp_2m(model, diffusion, x, *, sde, denoise_fn, generator, on_step):
    total = diffusion.num_timesteps
    previous_xstart, previous_h = None, None
    for i, index in enumerate(reversed(range(total))):
        t = diffusion.timesteps(index, x)
        pred_xstart = diffusion.model_predictions(model, x, t, denoise_fn=denoise_fn).pred_xstart
        if index == 0:
            x = pred_xstart
        else:
            alpha_bar = diffusion.lookup("alphas_cumprod", t, x)
            alpha_bar_next = diffusion.lookup("alphas_cumprod_prev", t, x)
            # lambda = log(alpha / sigma), half the log-SNR; h is the step in lambda
            log_snr, log_snr_next = _log_snr(alpha_bar), _log_snr(alpha_bar_next)
            h = 0.5 * (log_snr_next - log_snr)
            if previous_xstart is None or index == 1:
                denoised = pred_xstart
            else:
                r = previous_h / h
                denoised = (1 + 1 / (2 * r)) * pred_xstart - (1 / (2 * r)) * previous_xstart
            sigma_ratio = ((1 - alpha_bar_next) / (1 - alpha_bar)).sqrt()
            if sde:
                # the SDE solver's step is the ODE's over 2h, plus the noise the step removes
                kept = -torch.expm1(-2 * h)  # 1 - e^{-2h}
                x = (sigma_ratio * torch.exp(-h) * x + alpha_bar_next.sqrt() * kept * denoised
                     + (1 - alpha_bar_next).sqrt() * kept.sqrt() * randn_like(x, generator))
            else:
                x = sigma_ratio * x - alpha_bar_next.sqrt() * torch.expm1(-h) * denoised
            previous_xstart, previous_h = pred_xstart, h
        x = _after_step(on_step, i, total, x)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, diffusion, x, *, denoise_fn=None, generator=None, on_step=None):
    """DPM-Solver++(2M) (Lu et al. 2022 Alg. 2): multistep data prediction in log-SNR; deterministic.

    The first step is first order (no history yet), and so is the step into the cleanest level
    (DPM-Solver's `lower_order_final`): evenly spaced timesteps make that step's log-SNR jump several
    times the previous one, and extrapolating across it costs far more than it gains. The last step
    jumps straight to the predicted x_0. `generator` is accepted for the shared signature and unused.
    """
    return _dpmpp_2m(model, diffusion, x, sde=False, denoise_fn=denoise_fn, generator=generator, on_step=on_step)


@torch.no_grad()
def sample_dpmpp_2m_sde(model, diffusion, x, *, denoise_fn=None, generator=None, on_step=None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022 §5, the "sde-dpmsolver++" of their code): the same multistep
    data prediction for the reverse SDE, so each step adds fresh noise as DDPM does, which corrects
    the model's errors instead of carrying them along the ODE's path. Its first-order step is the DDPM
    ancestral step; ends as `sample_dpmpp_2m` does.
    """
    return _dpmpp_2m(model, diffusion, x, sde=True, denoise_fn=denoise_fn, generator=generator, on_step=on_step)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = dict(
    zip(SAMPLER_NAMES, (sample_ddpm, sample_ddim, sample_dpmpp_2m, sample_dpmpp_2m_sde), strict=True)
)


def sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    *,
    sampler: str = "ddpm",
    steps: int | str | None = None,
    eta: float = 0.0,
    denoise_fn: DenoiseFn | None = None,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> torch.Tensor:
    """x_0 from pure noise x_T with the named sampler, over `steps` respaced steps (all if None)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {', '.join(SAMPLERS)}")
    opts = {}
    if sampler == "ddim":
        opts["eta"] = eta
    elif eta != 0:
        raise ValueError(f"eta applies to the ddim sampler only; got eta={eta!r} with sampler {sampler!r}")
    diffusion = diffusion.respace(steps)
    run = SAMPLERS[sampler]
    return run(model, diffusion, noise, denoise_fn=denoise_fn, generator=generator, on_step=on_step, **opts)


__all__ = [
    "SAMPLERS", "ddim_step", "p_sample_step", "sample", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
]
