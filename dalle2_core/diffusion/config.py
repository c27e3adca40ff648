"""The typed config of one diffusion stage: schedule, objective, variance, x_0 clamp and default steps.

A module that owns a diffusion (a prior, a decoder stage) stores one of these and builds its
`GaussianDiffusion` and `denoise_fn` from it, so the whole sampling recipe travels with the
checkpoint's JSON config.
"""

from __future__ import annotations

import math

from ..config import Config, config_dataclass
from ..helpers import exists
from .gaussian import OBJECTIVES, POSTERIOR_LOG_VARIANCES, DenoiseFn, GaussianDiffusion
from .guidance import static_clamping
from .schedules import BETA_SCHEDULES


@config_dataclass
class DiffusionConfig(Config):
    """One stage's Gaussian diffusion (see `GaussianDiffusion` for the numerics options)."""

    timesteps: int = 1000
    beta_schedule: str = "cosine"
    objective: str = "eps"
    learned_variance: bool = False
    float32_schedule: bool = False  # diffusers' float32 betas and cumprod (Karlo's UnCLIPScheduler)
    posterior_log_variance: str = "clipped"  # "unclipped": UnCLIPScheduler's fixed_small_log / learned_range minimum
    x0_clamp: float | None = None  # predicted x_0 clamped to ±x0_clamp while sampling; None: untouched
    sample_steps: int | None = None  # default respaced sampling steps; None: every training step

    def __post_init__(self):
        if isinstance(self.timesteps, bool) or not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {self.timesteps!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; accepted: {', '.join(BETA_SCHEDULES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; accepted: {', '.join(OBJECTIVES)}")
        if self.posterior_log_variance not in POSTERIOR_LOG_VARIANCES:
            raise ValueError(
                f"unknown posterior_log_variance {self.posterior_log_variance!r}; accepted: {', '.join(POSTERIOR_LOG_VARIANCES)}"
            )
        if exists(self.x0_clamp) and not (isinstance(self.x0_clamp, (int, float)) and math.isfinite(self.x0_clamp) and self.x0_clamp > 0):
            raise ValueError(f"x0_clamp must be None or a positive finite number, got {self.x0_clamp!r}")
        if exists(self.sample_steps) and not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(f"sample_steps must be None or in 1 .. timesteps={self.timesteps}, got {self.sample_steps!r}")

    def to_diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion.from_schedule(
            self.beta_schedule,
            self.timesteps,
            objective=self.objective,
            learned_variance=self.learned_variance,
            float32_schedule=self.float32_schedule,
            posterior_log_variance=self.posterior_log_variance,
        )

    def denoise_fn(self) -> DenoiseFn | None:
        return static_clamping(self.x0_clamp) if exists(self.x0_clamp) else None


__all__ = ["DiffusionConfig"]
