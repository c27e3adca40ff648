"""Karlo v1-alpha's sampling defaults, written once: diffusers' `UnCLIPPipeline.__call__` defaults (its scheduler
configs hold no step counts or guidance) and its prior scheduler's x_0 clamp."""

from __future__ import annotations

from dalle2_core.checkpoint import SamplingSettings
from dalle2_core.diffusion import DiffusionConfig

KARLO_DEFAULTS = SamplingSettings(cond_scale=(8.0, 1.0), prior_cond_scale=4.0, prior_samples=1, steps=(25, 7), prior_steps=25,
                                  sampler="ddpm")


def karlo_prior_diffusion() -> DiffusionConfig:
    """diffusers' Karlo prior scheduler: x_0 prediction, fixed_small_log, x_0 clamped to ±5 (the original Karlo: ±10)."""
    return DiffusionConfig(objective="x0", float32_schedule=True, posterior_log_variance="unclipped", x0_clamp=5.0,
                           sample_steps=KARLO_DEFAULTS.prior_steps)


__all__ = ["KARLO_DEFAULTS", "karlo_prior_diffusion"]
