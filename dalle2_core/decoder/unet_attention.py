"""Attention layers of the decoder U-Net over feature maps: self, cross, linear (Shen et al.), window/grid (MaxViT).

The softmax attentions are `dalle2_core.nn.Attention` (through SDPA, so no (n, n) map is built by
hand). Module and parameter names follow DALLE2-pytorch 1.1.0 (`norm`, `null_kv`, `to_q`, `to_kv`,
`to_out`) so the LAION importer can map its weights one to one. 1.1.0 computes its logits with the
"PB-relax" trick (subtract the row max, scale by alpha); that is the same softmax in exact arithmetic,
so SDPA with the plain 1/sqrt(d) scale reproduces it.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..helpers import l2norm
from ..nn.attention import Attention
from ..nn.norm import ChanLayerNorm

# the U-Net's norms are torch's bias-free LayerNorm (weights `norm.weight`, as the LAION decoder's)
_layer_norm = partial(nn.LayerNorm, bias=False)


class SpatialCrossAttention(nn.Module):
    """Multi-head attention from every pixel of a (b, c, h, w) map to conditioning tokens, residual included.

    The learned null key/value lets a query attend to "nothing" when every token is a null token
    (classifier-free guidance, Ho & Salimans 2022).
    """

    def __init__(self, dim: int, *, context_dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.attn = Attention(dim, context_dim=context_dim, heads=heads, kv_heads=heads, dim_head=dim_head, norm=_layer_norm)

    def forward(self, x: torch.Tensor, context: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        h, w = x.shape[-2:]
        seq = rearrange(x, "b c h w -> b (h w) c")
        if recompute and torch.is_grad_enabled() and x.requires_grad:
            # recomputed in the backward pass (selective recomputation): otherwise the queries, the
            # attention output and two norms' inputs, up to 4x the map's width each, stay alive
            out = checkpoint(self.attn, seq, context, use_reentrant=False)
        else:
            out = self.attn(seq, context)
        # the residual is added in x's memory layout: a channels-last result would make every later
        # conv copy its weights to match (and keep those copies alive for the backward pass)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class SpatialSelfAttention(nn.Module):
    """Full self-attention over all pixels of a (b, c, h, w) map, residual included.

    Multi-query (Shazeer 2019): one key/value head shared by all query heads, as in the 1.1.0 U-Net.
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, norm=_layer_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = self.attn(rearrange(x, "b c h w -> b (h w) c"))
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)  # in x's layout, as above


class LinearAttention(nn.Module):
    """Efficient attention with linear complexity (Shen et al. 2018, "Efficient Attention"), residual included.

    Softmax over the feature axis for queries and over positions for keys, so the (d, d) context is
    formed first. `normalize_v` adds the later DALLE2-pytorch (1.4+) normalisation of v and k; 1.1.0
    weights (the LAION decoder) need it off.
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 32, normalize_v: bool = False):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.normalize_v = normalize_v
        inner_dim = heads * dim_head
        self.norm = ChanLayerNorm(dim)
        self.to_qkv = nn.Conv2d(dim, inner_dim * 3, 1, bias=False)
        self.nonlin = nn.GELU()
        self.to_out = nn.Sequential(nn.Conv2d(inner_dim, dim, 1, bias=False), ChanLayerNorm(dim))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        h, w = fmap.shape[-2:]
        x = self.norm(fmap)
        q, k, v = self.to_qkv(x).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (g c) x y -> (b g) (x y) c", g=self.heads) for t in (q, k, v))
        q = q.softmax(dim=-1) * self.scale
        k = k.softmax(dim=-2)
        if self.normalize_v:
            v = l2norm(v)
            k, v = k / (h * w) ** 0.5, v / (h * w) ** 0.5
        context = torch.einsum("b n d, b n e -> b d e", k, v)
        out = torch.einsum("b n d, b d e -> b n e", q, context)
        out = rearrange(out, "(b g) (x y) d -> b (g d) x y", g=self.heads, x=h, y=w)
        return fmap + self.to_out(self.nonlin(out))  # fmap first: the sum keeps its memory layout


class WindowGridAttention(nn.Module):
    """Block (local window) then grid (dilated) attention, each residual (MaxViT, Tu et al. 2022, Sec. 3.2).

    Both partitions hold `window`² pixels, so the cost is linear in the number of pixels while the
    grid pass still mixes information across the whole map.
    """

    def __init__(self, dim: int, *, window: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        self.window = window
        self.block_attn = Attention(dim, heads=heads, dim_head=dim_head, norm=_layer_norm)
        self.grid_attn = Attention(dim, heads=heads, dim_head=dim_head, norm=_layer_norm)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        h, w = fmap.shape[-2:]
        p = self.window
        if h % p or w % p:
            raise ValueError(f"feature map {h}x{w} is not divisible by sparse_attn_window={p}")
        nx, ny = h // p, w // p
        seq = rearrange(fmap, "b c (x p1) (y p2) -> (b x y) (p1 p2) c", p1=p, p2=p)  # p x p neighbours
        seq = self.block_attn(seq) + seq
        fmap = rearrange(seq, "(b x y) (p1 p2) c -> b c (x p1) (y p2)", x=nx, y=ny, p1=p)
        seq = rearrange(fmap, "b c (p1 x) (p2 y) -> (b x y) (p1 p2) c", p1=p, p2=p)  # p x p pixels h/p apart
        seq = self.grid_attn(seq) + seq
        return rearrange(seq, "(b x y) (p1 p2) c -> b c (p1 x) (p2 y)", x=nx, y=ny, p1=p)
