"""Position / timestep embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (b,) float tensor of positions (Vaswani et al. 2017, sec. 3.5): [sin, cos]."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        # frequencies span 1 .. 1/10000 over half_dim entries
        exponent = torch.arange(half_dim, device=x.device, dtype=torch.float32) * (-math.log(10000) / (half_dim - 1))
        angles = x.float()[:, None] * exponent.exp()[None, :]  # (b, half_dim)
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.cat((angles.sin(), angles.cos()), dim=-1).to(out_dtype)  # (b, dim)


class MLP(nn.Sequential):
    """`depth` hidden SiLU layers of width `expansion_factor * dim_out`, then a linear output."""

    def __init__(self, dim_in: int, dim_out: int, *, expansion_factor: float = 2.0, depth: int = 2):
        hidden = int(expansion_factor * dim_out)
        layers = [nn.Sequential(nn.Linear(dim_in, hidden), nn.SiLU())]
        layers += [nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU()) for _ in range(depth - 1)]
        super().__init__(*layers, nn.Linear(hidden, dim_out))
