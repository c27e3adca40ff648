"""MoVQ's blocks: VQGAN's resnet and single-head attention (Esser et al. 2021), with GroupNorm in the encoder and
SpatialNorm in the decoder (Zheng et al. 2022 eq. 3: the normalised features scaled and shifted by 1×1 convolutions
of the quantised latent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..helpers import exists
from .config import NORM_EPS, SPATIAL_NORM_GROUPS


class SpatialNorm(nn.Module):
    """GroupNorm(f) · conv_y(z_q) + conv_b(z_q), z_q resized (nearest) to f's resolution."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(SPATIAL_NORM_GROUPS, channels, eps=NORM_EPS)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm(f) * self.conv_y(zq) + self.conv_b(zq)


def _norm(channels: int, groups: int, zq_channels: int | None) -> nn.Module:
    return SpatialNorm(channels, zq_channels) if exists(zq_channels) else nn.GroupNorm(groups, channels, eps=NORM_EPS)


def _apply(norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    return norm(x, zq) if isinstance(norm, SpatialNorm) else norm(x)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv3×3 -> norm -> SiLU -> conv3×3, plus the input (a 1×1 conv when the widths differ).

    `zq_channels` set: the norms are SpatialNorms of the quantised latent `zq` given to `forward` (the decoder)."""

    def __init__(self, dim_in: int, dim_out: int, *, groups: int, zq_channels: int | None = None):
        super().__init__()
        self.norm1 = _norm(dim_in, groups, zq_channels)
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm2 = _norm(dim_out, groups, zq_channels)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(_apply(self.norm1, x, zq)))
        h = self.conv2(F.silu(_apply(self.norm2, h, zq)))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels with a residual: norm -> q, k, v -> softmax(q kᵀ / √c) v -> out."""

    def __init__(self, dim: int, *, groups: int, zq_channels: int | None = None):
        super().__init__()
        self.norm = _norm(dim, groups, zq_channels)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = rearrange(_apply(self.norm, x, zq), "b c y x -> b 1 (y x) c")  # one head
        out = F.scaled_dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))  # (b, 1, hw, c)
        out = rearrange(self.to_out(out), "b 1 (y x) c -> b c y x", y=height, x=width)
        return x + out


class Downsample(nn.Module):
    """Stride-2 conv3×3 after zero-padding the right and bottom edges by one pixel (VQGAN's asymmetric padding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then conv3×3."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


__all__ = ["Attention", "Downsample", "ResBlock", "SpatialNorm", "Upsample"]
