"""Timestep embedding of ADM / GLIDE (and Karlo's prior): sinusoidal features, cos first, then a SiLU MLP."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (b, dim) of timesteps (b,): [cos(t·f), sin(t·f)], f_i = max_period^(-i / (dim // 2)).

    Vaswani et al. 2017 sec. 3.5 with ADM's layout (Dhariwal & Nichol 2021, `timestep_embedding`):
    the frequency exponent runs over half the width with no shift and the cosines come first. The
    features are float32 whatever t's dtype; an odd width gets one zero feature at the end.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape (batch,), got {tuple(t.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]  # (b, half)
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (b, 2·half)
    if dim % 2:
        features = nn.functional.pad(features, (0, 1))
    return features


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of width `dim_in`, then Linear -> SiLU -> Linear (ADM's `time_embed`)."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int | None = None):
        super().__init__()
        self.dim_in = dim_in
        self.linear_1 = nn.Linear(dim_in, dim_hidden)
        self.linear_2 = nn.Linear(dim_hidden, dim_out or dim_hidden)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.dim_in).to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(features)))


__all__ = ["TimestepEmbedding", "timestep_features"]
