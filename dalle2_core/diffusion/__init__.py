"""Parameter-free diffusion math: schedules, the Gaussian diffusion, respacing, guidance, samplers."""

from .config import DiffusionConfig
from .edit import (
    STRENGTH_ROUNDINGS,
    StageEdit,
    blended_sample,
    check_picture,
    redrawn_steps,
    redraws_nothing,
    sample_stage,
    truncated_diffusion,
)
from .gaussian import OBJECTIVES, POSTERIOR_LOG_VARIANCES, GaussianDiffusion, ModelPrediction, PMeanVariance
from .guidance import classifier_free_guidance, dynamic_threshold, dynamic_thresholding, static_clamp, static_clamping
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .noise import RecordedNoise
from .repaint import INPAINT_SAMPLERS, repaint_sample
from .respace import space_timesteps
from .samplers import (
    SAMPLERS,
    ddim_step,
    p_sample_step,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
)
from .schedules import BETA_SCHEDULES, beta_schedule

__all__ = [
    "STRENGTH_ROUNDINGS",
    "StageEdit",
    "blended_sample",
    "check_picture",
    "redrawn_steps",
    "redraws_nothing",
    "sample_stage",
    "truncated_diffusion",
    "BETA_SCHEDULES",
    "DiffusionConfig",
    "OBJECTIVES",
    "POSTERIOR_LOG_VARIANCES",
    "SAMPLERS",
    "INPAINT_SAMPLERS",
    "GaussianDiffusion",
    "ModelPrediction",
    "PMeanVariance",
    "RecordedNoise",
    "beta_schedule",
    "classifier_free_guidance",
    "ddim_step",
    "discretized_gaussian_log_likelihood",
    "dynamic_threshold",
    "dynamic_thresholding",
    "mean_flat",
    "normal_kl",
    "p_sample_step",
    "repaint_sample",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "space_timesteps",
    "static_clamp",
    "static_clamping",
]
