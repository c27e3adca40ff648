"""MoVQ (Zheng et al. 2022, "MoVQ: Modulating Quantized Vectors for High-Fidelity Image Generation"): Kandinsky 2.2's autoencoder.

A VQGAN (Esser et al. 2021) whose decoder normalisations are modulated by the quantised latent (SpatialNorm).
Kandinsky's latent diffusion runs on the encoder's pre-quantisation latent and decodes its samples without
quantising them (diffusers' `force_not_quantize=True`); `quantize` gives the codebook path. Images are in
[-1, 1], as `VQGanVAE`'s; the latent is `downsample_factor` times smaller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..helpers import exists
from .blocks import Attention, Downsample, ResBlock, SpatialNorm, Upsample
from .config import NORM_EPS, MoVQConfig


class MoVQLevel(nn.Module):
    """One resolution level: resnets, each followed by attention where the level attends, and an optional resampler."""

    def __init__(self, resnets: list[ResBlock], attentions: list[Attention] | None, resample: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.resample = resample

    def forward(self, h: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, zq)
            if exists(self.attentions):
                h = self.attentions[i](h, zq)
        return self.resample(h) if exists(self.resample) else h


class MoVQMiddle(nn.Module):
    def __init__(self, dim: int, groups: int, zq_channels: int | None = None):
        super().__init__()
        self.resnet_1 = ResBlock(dim, dim, groups=groups, zq_channels=zq_channels)
        self.attention = Attention(dim, groups=groups, zq_channels=zq_channels)
        self.resnet_2 = ResBlock(dim, dim, groups=groups, zq_channels=zq_channels)

    def forward(self, h: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return self.resnet_2(self.attention(self.resnet_1(h, zq), zq), zq)


class MoVQEncoder(nn.Module):
    """images (b, in_channels, H, W) -> latent (b, latent_channels, H / f, W / f), GroupNorm throughout."""

    def __init__(self, c: MoVQConfig):
        super().__init__()
        groups, widths = c.norm_groups, c.widths
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        downs, dim = [], widths[0]
        for level, width in enumerate(widths):
            resnets = [ResBlock(dim if j == 0 else width, width, groups=groups) for j in range(c.layers_per_block)]
            attentions = [Attention(width, groups=groups) for _ in resnets] if c.attention[level] else None
            downs.append(MoVQLevel(resnets, attentions, Downsample(width) if level < len(widths) - 1 else None))
            dim = width
        self.downs = nn.ModuleList(downs)
        self.mid = MoVQMiddle(dim, groups)
        self.norm_out = nn.GroupNorm(groups, dim, eps=NORM_EPS)
        self.conv_out = nn.Conv2d(dim, c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.downs:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class MoVQDecoder(nn.Module):
    """latent (b, latent_channels, h, w) and the quantised latent it was made from -> images (b, out_channels, h·f, w·f)."""

    def __init__(self, c: MoVQConfig):
        super().__init__()
        zq, widths = c.latent_channels, c.widths
        self.conv_in = nn.Conv2d(c.latent_channels, widths[-1], 3, padding=1)
        self.mid = MoVQMiddle(widths[-1], c.norm_groups, zq)
        ups, dim = [], widths[-1]
        for level, width in reversed(list(enumerate(widths))):
            resnets = [
                ResBlock(dim if j == 0 else width, width, groups=c.norm_groups, zq_channels=zq) for j in range(c.layers_per_block + 1)
            ]
            attentions = [Attention(width, groups=c.norm_groups, zq_channels=zq) for _ in resnets] if c.attention[level] else None
            ups.append(MoVQLevel(resnets, attentions, Upsample(width) if level > 0 else None))
            dim = width
        self.ups = nn.ModuleList(ups)
        self.norm_out = SpatialNorm(dim, zq)
        self.conv_out = nn.Conv2d(dim, c.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(x), zq)
        for level in self.ups:
            h = level(h, zq)
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class MoVQ(nn.Module):
    """`encode(images) -> latent`, `quantize(latent) -> (quantised, indices)`, `decode(latent) -> images`; images in [-1, 1]."""

    def __init__(self, config: MoVQConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = c = MoVQConfig.build(config, owner="MoVQ", **kwargs)
        self.encoder = MoVQEncoder(c)
        self.quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)
        self.codebook = nn.Embedding(c.codebook_size, c.latent_channels)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)
        self.decoder = MoVQDecoder(c)

    @classmethod
    def from_config(cls, config: MoVQConfig | dict) -> MoVQ:
        return cls(config=config)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def _check(self, x: torch.Tensor, channels: int, factor: int, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must have shape (b, {channels}, h, w), got {got}")
        if any(s % factor for s in x.shape[-2:]):
            raise ValueError(f"{what}' height and width {tuple(x.shape[-2:])} must be multiples of {factor}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, in_channels, H, W) in [-1, 1] -> pre-quantisation latent (b, latent_channels, H / f, W / f)."""
        self._check(images, self.config.in_channels, self.downsample_factor, "images")
        return self.quant_conv(self.encoder(images))

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each latent pixel replaced by its nearest codebook vector (L2): (quantised (b, c, h, w), indices (b, h, w)).

        The quantised latent is written latent + (code - latent) with the difference detached (VQ-VAE's straight-through
        estimator, van den Oord et al. 2017 sec. 3.2): gradients reach the encoder, and the values round as diffusers' do."""
        self._check(latent, self.config.latent_channels, 1, "latent")
        h, w = latent.shape[-2:]
        flat = rearrange(latent, "b c h w -> b (h w) c")
        indices = torch.cdist(flat, self.codebook.weight[None].to(flat.dtype)).argmin(dim=-1)  # (b, h·w)
        codes = rearrange(self.codebook(indices), "b (h w) c -> b c h w", h=h, w=w)
        return latent + (codes - latent).detach(), rearrange(indices, "b (h w) -> b h w", h=h, w=w)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (b, latent_channels, h, w), unquantised as Kandinsky samples it -> images (b, out_channels, h·f, w·f), about [-1, 1].

        The decoder's SpatialNorms are modulated by the latent itself (for a quantised one: `decode(quantize(z)[0])`)."""
        self._check(latent, self.config.latent_channels, 1, "latent")
        return self.decoder(self.post_quant_conv(latent), latent)


__all__ = ["MoVQ", "MoVQDecoder", "MoVQEncoder", "MoVQLevel", "MoVQMiddle"]
