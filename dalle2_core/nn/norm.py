"""Bias-free layer norms with a learned gain `g` (the DALLE2-pytorch / LAION parameterisation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm over the last dim without bias (Ba et al. 2016); `stable` divides by the row max first.

    The "stable" variant (used as the prior's final norm) keeps large activations in range before the
    variance is taken; the division is detached so it does not change the gradient path.
    """

    def __init__(self, dim: int, eps: float = 1e-5, stable: bool = False):
        super().__init__()
        self.eps, self.stable = eps, stable
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        return F.layer_norm(x, self.g.shape, self.g, None, self.eps)


class ChanLayerNorm(nn.Module):
    """Bias-free LayerNorm over the channel dim of (b, c, h, w) feature maps; gain `g` is (1, c, 1, 1)."""

    def __init__(self, dim: int, eps: float = 1e-5, stable: bool = False):
        super().__init__()
        self.eps, self.stable = eps, stable
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:
            x = x / x.amax(dim=1, keepdim=True).detach()
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + self.eps).rsqrt() * self.g
