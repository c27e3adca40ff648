"""Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021): a parameter-free object over float64 tables.

The network is an argument, never an attribute. A model function is `model(x_t, t, **model_kwargs)`
with `t` the timesteps of the *training* schedule; a respaced diffusion maps its own indices through
`timestep_map` before every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..helpers import default, exists
from .losses import SIMPLE_LOSSES, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .respace import space_timesteps
from .schedules import beta_schedule

OBJECTIVES = ("eps", "x0", "v")
POSTERIOR_LOG_VARIANCES = ("clipped", "unclipped")

ModelFn = Callable[..., torch.Tensor]
DenoiseFn = Callable[[torch.Tensor], torch.Tensor]


class ModelPrediction(NamedTuple):
    pred_xstart: torch.Tensor
    pred_eps: torch.Tensor
    model_log_variance: torch.Tensor | None  # only with learned variance


class PMeanVariance(NamedTuple):
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    pred_eps: torch.Tensor


def _schedule(betas, alphas_cumprod, float32_schedule: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(betas, alphas_cumprod or None) as float64 CPU tensors, from either or both (see `GaussianDiffusion`)."""
    if not exists(betas) and not exists(alphas_cumprod):
        raise ValueError("give betas, alphas_cumprod, or both")
    if exists(betas) and float32_schedule and not exists(alphas_cumprod):
        betas32 = torch.as_tensor(betas, device="cpu").detach().to(torch.float32)
        betas, alphas_cumprod = betas32, torch.cumprod(1.0 - betas32, dim=0)
    if exists(alphas_cumprod):
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device="cpu").detach()
    if not exists(betas):
        betas = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    betas = torch.as_tensor(betas, dtype=torch.float64, device="cpu").detach()
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-d tensor, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError(f"betas must lie in (0, 1], got min {betas.min().item()} max {betas.max().item()}")
    if exists(alphas_cumprod) and alphas_cumprod.shape != betas.shape:
        raise ValueError(f"alphas_cumprod has shape {tuple(alphas_cumprod.shape)}, betas {tuple(betas.shape)}")
    return betas, alphas_cumprod


class GaussianDiffusion:
    """Forward process, posterior, parameterisations and losses of a discrete-time Gaussian diffusion."""

    def __init__(
        self,
        betas: torch.Tensor | None = None,
        objective: str = "eps",
        learned_variance: bool = False,
        timestep_map: torch.Tensor | list[int] | None = None,
        *,
        alphas_cumprod: torch.Tensor | None = None,
        float32_schedule: bool = False,
        posterior_log_variance: str = "clipped",
    ):
        """From `betas`, from `alphas_cumprod`, or from both (each kept bit-exact; respacing uses these).

        `float32_schedule`: the betas are rounded to float32 and alpha_bar is a float32 `cumprod`, as
        diffusers' schedulers compute them (UnCLIPScheduler: Karlo); the float64 tables then hold those
        values. Off, every table is float64 from the start.

        `posterior_log_variance` is the log of the fixed variance and the lower end of a learned
        range (Improved DDPM eq. 15): "clipped" replaces the zero posterior variance at t = 0 by the
        t = 1 value (Improved DDPM); "unclipped" is log(max(beta~_t, 1e-20)), UnCLIPScheduler's
        `fixed_small_log` and its `learned_range` minimum. The two differ only at t = 0, where no
        sampler adds noise, and in the t = 0 term of the variational bound.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
        if posterior_log_variance not in POSTERIOR_LOG_VARIANCES:
            raise ValueError(
                f"unknown posterior_log_variance {posterior_log_variance!r}; accepted: {', '.join(POSTERIOR_LOG_VARIANCES)}"
            )
        betas, alphas_cumprod = _schedule(betas, alphas_cumprod, float32_schedule)
        self.objective = objective
        self.learned_variance = bool(learned_variance)
        self.float32_schedule = bool(float32_schedule)
        self.posterior_log_variance = posterior_log_variance
        self.num_timesteps = T = betas.numel()

        if timestep_map is None:
            timestep_map = torch.arange(T, device="cpu")
        timestep_map = torch.as_tensor(timestep_map, dtype=torch.long, device="cpu")
        if timestep_map.shape != (T,):
            raise ValueError(f"timestep_map needs {T} entries (one per step), got shape {tuple(timestep_map.shape)}")
        self.timestep_map = timestep_map

        self._tables = _tables(betas, alphas_cumprod, posterior_log_variance)
        # float64 master tables; `lookup` casts them to the input's device and dtype
        self.betas = betas
        self.alphas_cumprod = self._tables["alphas_cumprod"]
        self.alphas_cumprod_prev = self._tables["alphas_cumprod_prev"]
        self.posterior_variance = self._tables["posterior_variance"]
        self._cast: dict[tuple, torch.Tensor] = {}  # per-(table, device, dtype) copies, so lookups never re-upload

    @classmethod
    def from_schedule(cls, name: str, timesteps: int, **kwargs) -> GaussianDiffusion:
        return cls(beta_schedule(name, timesteps), **kwargs)

    def __repr__(self) -> str:
        respaced = "" if self.is_identity_map else f", respaced from {int(self.timestep_map[-1]) + 1}"
        return (
            f"GaussianDiffusion(timesteps={self.num_timesteps}, objective={self.objective!r}, "
            f"learned_variance={self.learned_variance}{respaced})"
        )

    @property
    def is_identity_map(self) -> bool:
        return torch.equal(self.timestep_map, torch.arange(self.num_timesteps, device="cpu"))

    def respace(self, steps: int | str | Sequence[int] | None) -> GaussianDiffusion:
        """The diffusion over the timesteps `steps` keeps (`respace.space_timesteps`: a count, "ddimN", section
        counts, or an explicit list of timesteps); None: this one."""
        return self if steps is None else self.subset(space_timesteps(self.num_timesteps, steps))

    def subset(self, indices: Sequence[int]) -> GaussianDiffusion:
        """The diffusion over some of this one's indices (ascending), with exactly the same alpha_bar there.

        Respacing (Nichol & Dhariwal 2021 §4) and SDEdit's truncated schedule are both subsets. The betas are
        the ratios 1 - alpha_bar_t / alpha_bar_prev; a float32 schedule computes them in float32, as
        UnCLIPScheduler steps it, except that a step onto the index just before keeps the schedule's own beta.
        `timestep_map` composes, so the network still sees training timesteps. Every numerics option is kept.
        """
        kept = [int(i) for i in indices]
        if not kept or any(b <= a for a, b in zip(kept, kept[1:])) or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"a subset needs ascending indices in 0 .. {self.num_timesteps - 1}, got {kept[:8]}{'...' * (len(kept) > 8)}")
        if kept == list(range(self.num_timesteps)):
            return self
        options = dict(objective=self.objective, learned_variance=self.learned_variance,
                       timestep_map=self.timestep_map[kept], posterior_log_variance=self.posterior_log_variance)
        if not self.float32_schedule:
            return GaussianDiffusion(alphas_cumprod=self.alphas_cumprod[kept], **options)
        alphas_cumprod = self.alphas_cumprod[kept].to(torch.float32)  # exact: the values are float32 already
        betas = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        previous = torch.tensor([-1] + kept[:-1], device="cpu")
        adjacent = torch.tensor(kept, device="cpu") - 1 == previous  # (steps,)
        betas = torch.where(adjacent, self.betas[kept].to(torch.float32), betas)
        return GaussianDiffusion(betas, alphas_cumprod=alphas_cumprod, float32_schedule=True, **options)

    # ---- table lookup ------------------------------------------------------------------------

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if name not in self._tables:
            raise KeyError(f"no table {name!r}; available: {', '.join(self._tables)}")
        key = (name, device, dtype)
        if key not in self._cast:
            self._cast[key] = self._tables[name].to(device=device, dtype=dtype)
        return self._cast[key]

    def lookup(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at timesteps `t` (b,), shaped (b, 1, ..., 1) like `like`."""
        values = self._table(name, like.device, like.dtype)[t]
        return values.reshape(t.shape[0], *((1,) * (like.ndim - 1)))  # (b, 1, ..., 1)

    def timesteps(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`t` as a LongTensor (b,) on `like`'s device; an int is broadcast over the batch."""
        if isinstance(t, torch.Tensor):
            if t.shape != (like.shape[0],):
                raise ValueError(f"t must have shape ({like.shape[0]},) to match the batch, got {tuple(t.shape)}")
            return t.to(device=like.device, dtype=torch.long)
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep {t} out of range; accepted: 0 .. {self.num_timesteps - 1}")
        return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """This diffusion's indices mapped to the training schedule's timesteps (what the network sees)."""
        return self._table_long(t.device)[t]

    def _table_long(self, device: torch.device) -> torch.Tensor:
        key = ("timestep_map", device, torch.long)
        if key not in self._cast:
            self._cast[key] = self.timestep_map.to(device)
        return self._cast[key]

    # ---- forward process -------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Ho et al. eq. 4: x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        alpha, sigma = self.alpha_sigma(t, x_start)
        return alpha * x_start + sigma * noise

    def q_sample_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Ho et al. eq. 2, one forward step x_{t-1} -> x_t (RePaint re-noising, Lugmayr et al. 2022)."""
        noise = default(noise, lambda: torch.randn_like(x_prev))
        return self.lookup("sqrt_alphas", t, x_prev) * x_prev + self.lookup("sqrt_betas", t, x_prev) * noise

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Ho et al. eq. 6-7: mean, variance and log variance (see `posterior_log_variance`) of q(x_{t-1} | x_t, x_0)."""
        mean = self.lookup("posterior_mean_coef1", t, x_t) * x_start + self.lookup("posterior_mean_coef2", t, x_t) * x_t
        variance = self.lookup("posterior_variance", t, x_t)
        log_variance = self.lookup("posterior_log_variance", t, x_t)
        return mean, variance.expand_as(x_t), log_variance.expand_as(x_t)

    # ---- parameterisations (eps, x0, v; Salimans & Ho 2022 for v) --------------------------

    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)), so that x_t = alpha x_0 + sigma eps."""
        return self.lookup("sqrt_alphas_cumprod", t, like), self.lookup("sqrt_one_minus_alphas_cumprod", t, like)

    def predict_start_from_noise(self, x_t, t, eps):
        """Ho et al. eq. 4 solved for x_0."""
        recip = self.lookup("sqrt_recip_alphas_cumprod", t, x_t)
        return recip * x_t - self.lookup("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_noise_from_start(self, x_t, t, x_start):
        alpha, sigma = self.alpha_sigma(t, x_t)
        # the same as (x_t / alpha - x_0) / sqrt(1/alpha² - 1), but finite where alpha_bar = 0 (jsd's last step)
        return (x_t - alpha * x_start) / sigma

    def predict_v(self, x_start, t, noise):
        """v = alpha eps - sigma x_0."""
        alpha, sigma = self.alpha_sigma(t, x_start)
        return alpha * noise - sigma * x_start

    def predict_start_from_v(self, x_t, t, v):
        alpha, sigma = self.alpha_sigma(t, x_t)
        return alpha * x_t - sigma * v

    def predict_noise_from_v(self, x_t, t, v):
        alpha, sigma = self.alpha_sigma(t, x_t)
        return sigma * x_t + alpha * v

    def target(self, x_start, t, noise) -> torch.Tensor:
        """What the network is trained to output under this objective."""
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x_start
        return self.predict_v(x_start, t, noise)

    # ---- reverse process -------------------------------------------------------------------

    def call_model(self, model: ModelFn, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None):
        return model(x_t, self.model_timesteps(t), **(model_kwargs or {}))

    def split_output(self, output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, variance interpolation values or None) from a raw network output."""
        channels = x_t.shape[1] if x_t.ndim > 1 else 1
        expected = (x_t.shape[0], 2 * channels, *x_t.shape[2:]) if self.learned_variance else tuple(x_t.shape)
        if tuple(output.shape) != expected:
            kind = "learned-variance " if self.learned_variance else ""
            raise ValueError(
                f"{kind}model output has shape {tuple(output.shape)}; expected {expected} for x_t {tuple(x_t.shape)}"
            )
        if not self.learned_variance:
            return output, None
        pred, var_values = output.chunk(2, dim=1)
        return pred, var_values

    def learned_log_variance(self, var_values: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Improved DDPM eq. 15: log Sigma = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2."""
        frac = (var_values + 1) / 2
        max_log = self.lookup("log_betas", t, x_t)
        min_log = self.lookup("posterior_log_variance", t, x_t)
        return frac * max_log + (1 - frac) * min_log

    def interpret_output(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, denoise_fn: DenoiseFn | None = None
    ) -> ModelPrediction:
        """A raw network output as (pred_xstart, pred_eps, model_log_variance).

        `denoise_fn` (clamping, dynamic thresholding) acts on x_0; eps is then re-derived from the
        processed x_0 so that samplers stay consistent with it.
        """
        pred, var_values = self.split_output(output, x_t)
        if self.objective == "eps":
            pred_xstart, pred_eps = self.predict_start_from_noise(x_t, t, pred), pred
        elif self.objective == "x0":
            pred_xstart, pred_eps = pred, None
        else:
            pred_xstart, pred_eps = self.predict_start_from_v(x_t, t, pred), self.predict_noise_from_v(x_t, t, pred)
        if exists(denoise_fn):
            pred_xstart, pred_eps = denoise_fn(pred_xstart), None
        if pred_eps is None:
            pred_eps = self.predict_noise_from_start(x_t, t, pred_xstart)
        log_variance = self.learned_log_variance(var_values, x_t, t) if exists(var_values) else None
        return ModelPrediction(pred_xstart, pred_eps, log_variance)

    def model_predictions(self, model: ModelFn, x_t, t, model_kwargs=None, denoise_fn=None) -> ModelPrediction:
        return self.interpret_output(self.call_model(model, x_t, t, model_kwargs), x_t, t, denoise_fn)

    def p_mean_variance(
        self, model: ModelFn, x_t, t, model_kwargs=None, denoise_fn=None, output: torch.Tensor | None = None
    ) -> PMeanVariance:
        """Mean and variance of p(x_{t-1} | x_t): the posterior around the predicted x_0 (Ho et al. eq. 11).

        The variance is the posterior's beta~_t unless the model learns it. Pass `output` to reuse a
        forward pass already made.
        """
        output = output if exists(output) else self.call_model(model, x_t, t, model_kwargs)
        pred = self.interpret_output(output, x_t, t, denoise_fn)
        mean, variance, log_variance = self.q_posterior(pred.pred_xstart, x_t, t)
        if exists(pred.model_log_variance):
            log_variance = pred.model_log_variance
            variance = log_variance.exp()
        return PMeanVariance(mean, variance, log_variance, pred.pred_xstart, pred.pred_eps)

    # ---- training ---------------------------------------------------------------------------

    def training_loss_terms(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
        loss_type: str = "l2",
        p2_gamma: float = 0.0,
        p2_k: float = 1.0,
        vb_weight: float = 1e-3,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses {"loss", "simple", "vb"}: loss = p2 · simple + vb_weight · vb.

        simple: l1 / l2 / huber between the network output and the objective's target (Ho et al.
        eq. 14), weighted by P2 (Choi et al. 2022 eq. 8: (k + SNR)^-gamma). vb (learned variance
        only, Improved DDPM eq. 16): KL to the true posterior with the predicted mean detached, or
        the discretised decoder NLL at t = 0, in bits per dimension.
        """
        if loss_type not in SIMPLE_LOSSES:
            raise ValueError(f"unknown loss_type {loss_type!r}; accepted: {', '.join(SIMPLE_LOSSES)}")
        if not math.isfinite(p2_gamma) or p2_gamma < 0:
            raise ValueError(f"p2_gamma must be a finite number >= 0, got {p2_gamma!r}")
        noise = default(noise, lambda: torch.randn_like(x_start))
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        x_t = self.q_sample(x_start, t, noise)
        output = self.call_model(model, x_t, t, model_kwargs)
        pred, var_values = self.split_output(output, x_t)

        simple = mean_flat(SIMPLE_LOSSES[loss_type](pred, self.target(x_start, t, noise), reduction="none"))
        if p2_gamma > 0:
            simple = simple * (p2_k + self.lookup("snr", t, simple)) ** -p2_gamma
        terms = {"simple": simple}

        if self.learned_variance:
            # the vb term trains only the variance: the mean comes from a detached prediction
            frozen = torch.cat([pred.detach(), var_values], dim=1)
            model_mean = self.p_mean_variance(model, x_t, t, output=frozen)
            true_mean, _, true_log_variance = self.q_posterior(x_start, x_t, t)
            kl = normal_kl(true_mean, true_log_variance, model_mean.mean, model_mean.log_variance)
            kl = mean_flat(kl) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(x_start, model_mean.mean, 0.5 * model_mean.log_variance)
            nll = mean_flat(nll) / math.log(2.0)
            terms["vb"] = torch.where(t == 0, nll, kl)
            terms["loss"] = simple + vb_weight * terms["vb"]
        else:
            terms["vb"] = torch.zeros_like(simple)
            terms["loss"] = simple
        return terms

    def training_losses(self, model: ModelFn, x_start, t, noise=None, model_kwargs=None, **loss_opts) -> torch.Tensor:
        """Per-sample training loss (b,); see `training_loss_terms` for the parts and options."""
        return self.training_loss_terms(model, x_start, t, noise, model_kwargs, **loss_opts)["loss"]

    def sample_timesteps(self, batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training timesteps (b,)."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)


def _tables(betas: torch.Tensor, alphas_cumprod: torch.Tensor | None, posterior_log_variance: str) -> dict[str, torch.Tensor]:
    """Every schedule table the diffusion looks up (float64, on the CPU), from its betas (and alpha_bar if given)."""
    T = betas.numel()
    alphas = 1.0 - betas
    if not exists(alphas_cumprod):
        alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)  # Ho et al. eq. 7
    if posterior_log_variance == "unclipped" or T == 1:
        posterior_log_variance_table = torch.log(posterior_variance.clamp(min=1e-20))
    else:
        # the posterior variance is 0 at t = 0; Improved DDPM substitutes the t = 1 value so the log stays finite
        posterior_log_variance_table = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
    return {
        "betas": betas,
        "log_betas": torch.log(betas),
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas": torch.sqrt(alphas),
        "sqrt_betas": torch.sqrt(betas),
        "sqrt_alphas_cumprod": torch.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / alphas_cumprod - 1.0),
        "snr": alphas_cumprod / (1.0 - alphas_cumprod),
        "posterior_variance": posterior_variance,
        "posterior_log_variance": posterior_log_variance_table,
        # Ho et al. eq. 7: mu~ = coef1 * x_0 + coef2 * x_t
        "posterior_mean_coef1": betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
    }


__all__ = ["OBJECTIVES", "POSTERIOR_LOG_VARIANCES", "GaussianDiffusion", "ModelPrediction", "PMeanVariance"]
