"""Likelihood terms of the variational bound (Ho et al. 2020 §3.3, Nichol & Dhariwal 2021 §3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# reconstruction losses of the "simple" objective, by the names the DALLE2-pytorch README uses
SIMPLE_LOSSES = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
    "huber": F.smooth_l1_loss,
}


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (b, ...) -> (b,)."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, bin_width: float = 2.0 / 255.0
) -> torch.Tensor:
    """Ho et al. 2020 eq. 13: log-probability of 8-bit data in [-1, 1] under a discretised Gaussian.

    The outermost bins extend to ±inf so that the probabilities over all 256 values sum to one.
    """
    if not (x.shape == means.shape == log_scales.shape):
        shapes = f"x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        raise ValueError(f"shapes must match, got {shapes}")
    half = bin_width / 2
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centered + half))
    cdf_min = torch.special.ndtr(inv_std * (centered - half))
    # clamping keeps log finite (and its gradient defined) when a bin gets no mass at this precision
    tiny = torch.finfo(x.dtype).tiny if x.dtype == torch.float64 else 1e-12
    log_cdf_plus = torch.log(cdf_plus.clamp(min=tiny))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=tiny))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=tiny))
    edge = 1.0 - half / 2  # any value past this is in the first or last bin
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_cdf_delta))


__all__ = ["SIMPLE_LOSSES", "discretized_gaussian_log_likelihood", "mean_flat", "normal_kl"]
