"""Karlo v1-alpha's components from diffusers' configs: the prior with its scheduler, and the decoder cascade from
its six configs (text_proj, decoder, super_res_first, super_res_last and the two schedulers)."""

from __future__ import annotations

from dalle2_core.convert.diffusers_config import (
    standardized_prior_config,
    text_proj_config,
    unclip_scheduler_config,
    unet2d_condition_config,
    unet2d_config,
)
from dalle2_core.families.karlo.cascade import KarloCascadeConfig
from dalle2_core.families.karlo.defaults import KARLO_DEFAULTS
from dalle2_core.prior.standardized_prior import StandardizedPriorConfig


def karlo_cascade_config(
    text_proj: dict, decoder: dict, super_res_first: dict, super_res_last: dict, decoder_scheduler: dict, super_res_scheduler: dict
) -> KarloCascadeConfig:
    """The decoder cascade from its six diffusers configs (the component folders of the same names)."""
    return KarloCascadeConfig(
        text_proj=text_proj_config(text_proj),
        decoder=unet2d_condition_config(decoder),
        super_res_first=unet2d_config(super_res_first, what="super_res_first (UNet2DModel)"),
        super_res_last=unet2d_config(super_res_last, what="super_res_last (UNet2DModel)"),
        decoder_diffusion=unclip_scheduler_config(
            decoder_scheduler, sample_steps=KARLO_DEFAULTS.steps[0], what="decoder_scheduler (UnCLIPScheduler)"
        ),
        super_res_diffusion=unclip_scheduler_config(
            super_res_scheduler, sample_steps=KARLO_DEFAULTS.steps[1], what="super_res_scheduler (UnCLIPScheduler)"
        ),
    )


def karlo_prior_config(prior: dict, scheduler: dict) -> StandardizedPriorConfig:
    """The prior component: `prior/config.json` and `prior_scheduler/scheduler_config.json`, Karlo's default steps."""
    return standardized_prior_config(prior, scheduler, sample_steps=KARLO_DEFAULTS.prior_steps)


__all__ = ["karlo_cascade_config", "karlo_prior_config"]
