"""The ADM / GLIDE U-Net (Dhariwal & Nichol 2021; Nichol et al. 2022): Karlo's decoder and super-resolution nets.

Levels run from the highest resolution down. Each level has `layers_per_block` resnet blocks (each
followed by joint attention where the level attends) and, except the last, a resnet block that
downsamples. The middle is resnet -> [attention] -> resnet. Each up level has one block more than
its down level, every one taking a skip, and all but the last end with an upsampling resnet block.
Skips are ADM's: the stem output, every resnet(+attention) output and every downsampler output.
"""

from __future__ import annotations

import torch
from torch import nn

from ..helpers import exists
from .attention import ContextKV, JointAttention, context_bias
from .blocks import AdmResBlock
from .config import AdmUnetConfig
from .embedding import TimestepEmbedding
from .image_conditioning import ImageConditioning


class AdmLevel(nn.Module):
    """One resolution level: resnets, their attention layers (or none) and an optional resampler."""

    def __init__(self, resnets: list[AdmResBlock], attentions: list[JointAttention] | None, resample: AdmResBlock | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.resample = resample

    def block(self, i: int, h, emb, context, bias):
        h = self.resnets[i](h, emb)
        return self.attentions[i](h, context, bias) if exists(self.attentions) else h


class AdmMiddle(nn.Module):
    def __init__(self, resnet_1: AdmResBlock, attention: JointAttention | None, resnet_2: AdmResBlock):
        super().__init__()
        self.resnet_1, self.attention, self.resnet_2 = resnet_1, attention, resnet_2

    def forward(self, h, emb, context, bias):
        h = self.resnet_1(h, emb)
        if exists(self.attention):
            h = self.attention(h, context, bias)
        return self.resnet_2(h, emb)


class AdmUnet(nn.Module):
    """ADM U-Net; `forward(x, t, *, context=None, context_mask=None, added_time_embed=None, image_embed=None)`."""

    def __init__(self, config: AdmUnetConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = c = AdmUnetConfig.build(config, owner="AdmUnet", **kwargs)
        widths, time_dim, n = c.widths, c.time_embed_dim, len(c.widths)
        blk = c.blocks
        resnet = lambda i, o, resample=None: AdmResBlock(  # noqa: E731
            i, o, time_dim, scale_shift=blk.scale_shift, groups=blk.norm_groups, eps=blk.norm_eps, dropout=blk.dropout, resample=resample
        )
        attend = lambda dim: JointAttention(  # noqa: E731
            dim, c.conditioning.context_dim, head_dim=c.attention.head_dim, groups=blk.norm_groups, eps=blk.norm_eps
        )
        self.time_embed = TimestepEmbedding(widths[0], time_dim)
        cond = c.conditioning
        self.image_conditioning = (
            ImageConditioning(cond.image_embed_dim, cond.context_dim, time_dim, cond.image_tokens) if exists(cond.image_embed_dim) else None
        )
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)

        skips, downs, dim = [widths[0]], [], widths[0]
        for level, width in enumerate(widths):
            resnets = [resnet(dim if j == 0 else width, width) for j in range(c.layers_per_block)]
            attentions = [attend(width) for _ in resnets] if c.level_attends(level) else None
            skips += [width] * len(resnets)
            down = resnet(width, width, "down") if level < n - 1 else None
            skips += [width] if exists(down) else []
            downs.append(AdmLevel(resnets, attentions, down))
            dim = width
        self.downs = nn.ModuleList(downs)
        self.mid = AdmMiddle(resnet(dim, dim), attend(dim) if c.attention.middle else None, resnet(dim, dim))

        ups = []
        for level, width in reversed(list(enumerate(widths))):
            resnets = []
            for _ in range(c.layers_per_block + 1):
                resnets.append(resnet(dim + skips.pop(), width))
                dim = width
            attentions = [attend(width) for _ in resnets] if c.level_attends(level) else None
            ups.append(AdmLevel(resnets, attentions, resnet(width, width, "up") if level > 0 else None))
        self.ups = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(blk.norm_groups, widths[0], eps=blk.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], c.out_channels, 3, padding=1)
        for i, layer in enumerate(self._attention_layers()):
            layer.kv_index = i

    def _attention_layers(self) -> list[JointAttention]:
        return [m for m in self.modules() if isinstance(m, JointAttention)]

    def encode_context(self, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None, **kwargs) -> dict:
        """`forward`'s keywords with the context replaced by every attention layer's projected keys and values
        (`ContextKV`): computed once per sampling run, the same numbers as projecting at every step. An
        image-conditioned U-Net takes `image_embed=` instead of a context and keeps it for the time embedding."""
        image_embed = kwargs.get("image_embed")
        if not exists(context) and exists(self.image_conditioning) and isinstance(image_embed, torch.Tensor):
            context = self.image_conditioning.context(self._checked_image_embed(image_embed, image_embed.shape[0]))
        if not exists(context):
            raise ValueError("encode_context needs the context tokens (or image_embed= for an image-conditioned U-Net)")
        kv = tuple(layer.context_kv(context) for layer in self._attention_layers())
        return dict(context=ContextKV(kv, context.shape[0]), context_mask=context_mask, **kwargs)

    @classmethod
    def from_config(cls, config: AdmUnetConfig | dict) -> AdmUnet:
        return cls(config=config)

    def _checked_image_embed(self, image_embed, batch: int) -> torch.Tensor:
        dim = self.config.conditioning.image_embed_dim
        if not exists(self.image_conditioning):
            raise ValueError("this U-Net takes no image_embed (its config has no image_embed_dim)")
        if not isinstance(image_embed, torch.Tensor) or image_embed.shape != (batch, dim):
            got = tuple(image_embed.shape) if isinstance(image_embed, torch.Tensor) else type(image_embed).__name__
            raise ValueError(f"image_embed must have shape ({batch}, {dim}), got {got}")
        return image_embed

    def _check(self, x, t, context, context_mask, added_time_embed, image_embed) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must have shape (b, {c.in_channels}, h, w), got {tuple(x.shape)}")
        if any(s % c.downsample_factor for s in x.shape[-2:]):
            raise ValueError(f"x's height and width {tuple(x.shape[-2:])} must be multiples of {c.downsample_factor}")
        if exists(self.image_conditioning) or exists(image_embed):
            self._checked_image_embed(image_embed, x.shape[0])
            if exists(context) and not isinstance(context, ContextKV):
                raise ValueError("an image-conditioned U-Net makes its context from image_embed: pass no context tokens")
        if c.attends and not exists(context) and not exists(image_embed):
            raise ValueError(f"this U-Net attends to context tokens: pass context (b, n, {c.conditioning.context_dim})")
        if isinstance(context, ContextKV):
            if context.batch != x.shape[0]:
                raise ValueError(f"context was encoded for batch {context.batch}, x has {x.shape[0]}")
            # (b, n, head_dim): stands in for the context in the mask check
            context = context.kv[0][0][:, 0] if context.kv else None
        elif exists(context) and (context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.conditioning.context_dim):
            raise ValueError(f"context must have shape ({x.shape[0]}, n, {c.conditioning.context_dim}), got {tuple(context.shape)}")
        if exists(context_mask) and (not exists(context) or context_mask.shape != context.shape[:2]):
            raise ValueError(f"context_mask must have shape (b, n) matching context, got {tuple(context_mask.shape)}")
        if c.conditioning.added_time_embed != exists(added_time_embed):
            need = "needs" if c.conditioning.added_time_embed else "takes no"
            raise ValueError(f"this U-Net {need} added_time_embed (b, {c.time_embed_dim})")
        t = torch.as_tensor(t, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        context: torch.Tensor | ContextKV | None = None,
        context_mask: torch.Tensor | None = None,
        added_time_embed: torch.Tensor | None = None,
        image_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (b, in_channels, h, w), t (b,) or scalar; context (b, n, context_dim) (or `encode_context`'s) with a boolean
        `context_mask` (b, n), True = attend; `added_time_embed` (b, time_embed_dim) is added to the time
        embedding; `image_embed` (b, image_embed_dim), for an image-conditioned U-Net, gives both the context
        tokens (unless `encode_context` made them) and a time-embedding term. Returns (b, out_channels, h, w)."""
        t = self._check(x, t, context, context_mask, added_time_embed, image_embed)
        emb = self.time_embed(t)
        if exists(added_time_embed):
            emb = emb + added_time_embed
        if exists(self.image_conditioning):
            emb = emb + self.image_conditioning.time(image_embed)
            context = context if exists(context) else self.image_conditioning.context(image_embed)
        bias = context_bias(context_mask, x.dtype) if exists(context_mask) else None

        h = self.conv_in(x)
        skips = [h]
        for level in self.downs:
            for i in range(len(level.resnets)):
                h = level.block(i, h, emb, context, bias)
                skips.append(h)
            if exists(level.resample):
                h = level.resample(h, emb)
                skips.append(h)
        h = self.mid(h, emb, context, bias)
        for level in self.ups:
            for i in range(len(level.resnets)):
                h = level.block(i, torch.cat([h, skips.pop()], dim=1), emb, context, bias)
            if exists(level.resample):
                h = level.resample(h, emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


__all__ = ["AdmLevel", "AdmMiddle", "AdmUnet"]
