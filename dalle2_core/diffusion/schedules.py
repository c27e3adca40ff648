"""Beta schedules: small pure functions returning float64 tables of shape (timesteps,)."""

from __future__ import annotations

import math

import torch


def _check_timesteps(timesteps: int) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
    return timesteps


def _ddpm_range(timesteps: int) -> tuple[float, float]:
    """DDPM's 1e-4 .. 0.02 at 1000 steps, rescaled so other step counts keep the same total noise."""
    scale = 1000 / timesteps
    return scale * 1e-4, scale * 0.02


def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021) eq. 17: alpha_bar(t) = cos²((t/T + s)/(1 + s) · π/2)."""
    timesteps = _check_timesteps(timesteps)
    x = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64, device="cpu")
    alphas_cumprod = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    # the last betas approach 1 (alpha_bar -> 0); clipping keeps x_T slightly informative, as in the paper
    return betas.clamp(0, max_beta)


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """DDPM (Ho et al. 2020) linear schedule, 1e-4 .. 0.02 at 1000 steps."""
    start, end = _ddpm_range(_check_timesteps(timesteps))
    return torch.linspace(start, end, timesteps, dtype=torch.float64, device="cpu")


def quadratic_beta_schedule(timesteps: int) -> torch.Tensor:
    """Linear in sqrt(beta) over the DDPM range."""
    start, end = _ddpm_range(_check_timesteps(timesteps))
    return torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64, device="cpu") ** 2


def sigmoid_beta_schedule(timesteps: int) -> torch.Tensor:
    """Sigmoid over [-6, 6] spanning the DDPM range (as in DALLE2-pytorch)."""
    start, end = _ddpm_range(_check_timesteps(timesteps))
    x = torch.linspace(-6, 6, timesteps, dtype=torch.float64, device="cpu")
    return torch.sigmoid(x) * (end - start) + start


def jsd_beta_schedule(timesteps: int) -> torch.Tensor:
    """Sohl-Dickstein et al. 2015: beta_t = 1/(T - t), i.e. 1/T, 1/(T-1), ..., 1.

    The last beta is 1, so alpha_bar reaches exactly 0 and x_T holds no trace of x_0; an `eps`
    objective cannot recover x_0 at that step (use `x0` or `v`).
    """
    timesteps = _check_timesteps(timesteps)
    return 1.0 / torch.linspace(timesteps, 1, timesteps, dtype=torch.float64, device="cpu")


BETA_SCHEDULES = {
    "cosine": cosine_beta_schedule,
    "linear": linear_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "jsd": jsd_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """The named schedule's betas as a float64 tensor (timesteps,)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; accepted: {', '.join(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[name](timesteps)


__all__ = [
    "BETA_SCHEDULES",
    "beta_schedule",
    "cosine_beta_schedule",
    "jsd_beta_schedule",
    "linear_beta_schedule",
    "quadratic_beta_schedule",
    "sigmoid_beta_schedule",
]
