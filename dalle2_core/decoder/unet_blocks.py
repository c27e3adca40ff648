"""Convolutional building blocks of the decoder U-Net: time embedding, resnet / ConvNeXt blocks, resamplers.

Names follow DALLE2-pytorch 1.1.0 (`block1`, `block2`, `res_conv`, `time_mlp`, `cross_attn`) so that
the LAION decoder weights map onto them one to one.
"""

from __future__ import annotations

import torch
from einops import repeat
from einops.layers.torch import Rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..helpers import default, exists
from .unet_attention import SpatialCrossAttention


class Block(nn.Module):
    """3x3 conv, GroupNorm, optional FiLM scale/shift from the time embedding, SiLU."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        if dim_out % groups:
            raise ValueError(f"resnet_groups={groups} must divide the block width {dim_out}")
        self.project = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None, recompute: bool = False
    ) -> torch.Tensor:
        x = self.project(x)
        if recompute and torch.is_grad_enabled() and x.requires_grad:
            # norm, FiLM and SiLU are cheap to recompute in the backward pass; running them here
            # keeps three more maps of this size alive until then (same numbers either way)
            return checkpoint(self._norm_act, x, scale_shift, use_reentrant=False)
        return self._norm_act(x, scale_shift)

    def _norm_act(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = self.norm(x)
        if exists(scale_shift):
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """BigGAN-style residual block with time FiLM (Nichol & Dhariwal 2021) and optional cross-attention."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        time_cond_dim: int | None = None,
        cond_dim: int | None = None,
        groups: int = 8,
        cross_attn_heads: int = 8,
        cross_attn_dim_head: int = 64,
    ):
        super().__init__()
        self.time_mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2)) if exists(time_cond_dim) else None
        )
        self.cross_attn = (
            SpatialCrossAttention(dim_out, context_dim=cond_dim, heads=cross_attn_heads, dim_head=cross_attn_dim_head)
            if exists(cond_dim)
            else None
        )
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(
        self, x: torch.Tensor, time_emb: torch.Tensor | None = None, cond: torch.Tensor | None = None, recompute: bool = False
    ):
        """`recompute`: selective recomputation in training (the Unet's `selective_recompute`), same gradients."""
        scale_shift = None
        if exists(self.time_mlp) and exists(time_emb):
            scale_shift = self.time_mlp(time_emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (b, c, 1, 1)
        h = self.block1(x, scale_shift=scale_shift, recompute=recompute)
        if exists(self.cross_attn):
            h = self.cross_attn(h, cond, recompute=recompute)
        h = self.block2(h, recompute=recompute)
        return h + self.res_conv(x)


class ConvNextBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022): 7x7 depthwise conv, then an inverted bottleneck.

    The time embedding is added after the depthwise conv and cross-attention follows the bottleneck,
    the same interface as `ResnetBlock`.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        time_cond_dim: int | None = None,
        cond_dim: int | None = None,
        mult: int = 2,
        groups: int = 8,
        cross_attn_heads: int = 8,
        cross_attn_dim_head: int = 64,
    ):
        super().__init__()
        del groups  # ConvNeXt normalises with one group (a LayerNorm over channels and pixels)
        self.time_mlp = nn.Sequential(nn.GELU(), nn.Linear(time_cond_dim, dim)) if exists(time_cond_dim) else None
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        hidden = dim_out * mult
        self.net = nn.Sequential(
            nn.GroupNorm(1, dim),
            nn.Conv2d(dim, hidden, 3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, hidden),
            nn.Conv2d(hidden, dim_out, 3, padding=1),
        )
        self.cross_attn = (
            SpatialCrossAttention(dim_out, context_dim=cond_dim, heads=cross_attn_heads, dim_head=cross_attn_dim_head)
            if exists(cond_dim)
            else None
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(
        self, x: torch.Tensor, time_emb: torch.Tensor | None = None, cond: torch.Tensor | None = None, recompute: bool = False
    ):
        h = self.ds_conv(x)
        if exists(self.time_mlp) and exists(time_emb):
            h = h + self.time_mlp(time_emb)[:, :, None, None]  # (b, c, 1, 1)
        h = self.net(h)
        if exists(self.cross_attn):
            h = self.cross_attn(h, cond, recompute=recompute)
        return h + self.res_conv(x)


class CrossEmbedLayer(nn.Module):
    """Cross-scale embedding: parallel convs of several kernel sizes, concatenated (CrossFormer, Wang et al. 2021).

    Larger kernels get fewer channels (halving per scale), the smallest kernel gets the remainder.
    """

    def __init__(self, dim_in: int, kernel_sizes: tuple[int, ...], dim_out: int | None = None, stride: int = 2):
        super().__init__()
        if not all(k % 2 == stride % 2 for k in kernel_sizes):
            parity = "odd" if stride % 2 else "even"
            raise ValueError(f"cross-embed kernel sizes {kernel_sizes} must all be {parity} for stride {stride}")
        dim_out = default(dim_out, dim_in)
        kernel_sizes = sorted(kernel_sizes)
        dim_scales = [int(dim_out / (2**i)) for i in range(1, len(kernel_sizes))]
        dim_scales = [*dim_scales, dim_out - sum(dim_scales)]
        self.convs = nn.ModuleList(
            nn.Conv2d(dim_in, d, k, stride=stride, padding=(k - stride) // 2) for k, d in zip(kernel_sizes, dim_scales)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


def Downsample(dim: int, dim_out: int, mode: str = "conv") -> nn.Module:
    """Halve the resolution: a stride-2 4x4 conv (DALLE2-pytorch 1.1.0) or pixel-unshuffle + 1x1 conv
    (SP-conv, Sunkara & Luo 2022; DALLE2-pytorch 1.10+)."""
    if mode == "conv":
        return nn.Conv2d(dim, dim_out, 4, 2, 1)
    if mode == "unshuffle":
        return nn.Sequential(
            Rearrange("b c (h s1) (w s2) -> b (c s1 s2) h w", s1=2, s2=2),
            nn.Conv2d(dim * 4, dim_out, 1),
        )
    raise ValueError(f"unknown downsample_mode {mode!r}; accepted: 'conv', 'unshuffle'")


class PixelShuffleUpsample(nn.Module):
    """Double the resolution with a 1x1 conv + pixel shuffle, initialised as nearest upsampling
    (ICNR, Aitken et al. 2017) so it starts free of checkerboard artefacts."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        conv = nn.Conv2d(dim, dim_out * 4, 1)
        weight = torch.empty(dim_out, dim, 1, 1)
        nn.init.kaiming_uniform_(weight)
        with torch.no_grad():
            conv.weight.copy_(repeat(weight, "o ... -> (o r) ...", r=4))
            conv.bias.zero_()
        self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def NearestUpsample(dim: int, dim_out: int) -> nn.Module:
    """Double the resolution with nearest-neighbour interpolation and a 3x3 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


def rearrange_tokens(n: int) -> Rearrange:
    """A flat (b, n*d) projection to n tokens (b, n, d)."""
    return Rearrange("b (n d) -> b n d", n=n)


__all__ = [
    "Block",
    "ConvNextBlock",
    "CrossEmbedLayer",
    "Downsample",
    "NearestUpsample",
    "PixelShuffleUpsample",
    "ResnetBlock",
    "rearrange_tokens",
]
