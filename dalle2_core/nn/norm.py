"""Layer norms: the bias-free `g` gain of DALLE2-pytorch / LAION, and one over the channels of feature maps."""

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
    """LayerNorm over the channels of a (b, c, h, w) map at every pixel (Ba et al. 2016): gain `weight`
    (c,), and a `bias` (c,) only when asked for (the decoder's is gain-only, as DALLE2-pytorch's).

    The result has the input's memory layout: a channels-last map would make the next conv copy its
    weights to match.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)  # (b, h, w, c)
        return torch.empty_like(x).copy_(out.permute(0, 3, 1, 2))  # (b, c, h, w)
