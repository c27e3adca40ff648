"""Attention (multi-query or multi-head, self or cross, learned null key/value, rotary) and the T5 relative bias."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_core.helpers import default, exists
from dalle2_core.nn.norm import LayerNorm
from dalle2_core.nn.rotary import RotaryEmbedding


class RelPosBias(nn.Module):
    """Causal T5 relative position bias (Raffel et al. 2020, sec. 2.1): log-spaced distance buckets."""

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        """Bucket of each key-minus-query offset; keys ahead of the query all share bucket 0."""
        n = (-relative_position).clamp(min=0)
        max_exact = self.num_buckets // 2
        # distances past max_exact share buckets spaced logarithmically up to max_distance
        far = max_exact + (
            torch.log(n.clamp(min=max_exact).float() / max_exact)
            / math.log(self.max_distance / max_exact)
            * (self.num_buckets - max_exact)
        ).long()
        far = far.clamp(max=self.num_buckets - 1)
        return torch.where(n < max_exact, n, far)

    def forward(self, i: int, j: int, *, device: torch.device) -> torch.Tensor:
        """(heads, i, j) bias for i queries at positions 0..i-1 and j keys at positions 0..j-1."""
        q_pos = torch.arange(i, device=device)
        k_pos = torch.arange(j, device=device)
        buckets = self.bucket(k_pos[None, :] - q_pos[:, None])  # (i, j)
        return rearrange(self.relative_attention_bias(buckets), "i j h -> h i j")


class Attention(nn.Module):
    """Pre-norm attention through SDPA, with a learned null key/value: the one attention of every network.

    `kv_heads=1` is multi-query attention (Shazeer 2019: all query heads share one key/value head;
    the prior and the U-Net's self-attention), `kv_heads=heads` multi-head attention (the U-Net's
    cross-attention, `context_dim` set: keys and values come from the conditioning tokens). The
    learned null key/value lets every query attend to "nothing" (needed when all real keys are
    masked, and what classifier-free guidance falls back on). Rotary embedding is applied to q and k
    before the null key/value joins. `attn_bias` (h, n, n + 1) is added to the logits multiplied by
    `pb_relax_alpha` when given: the 1.1.0-era "PB-relax" numerics (Ding et al. 2021, CogView
    sec. 2.4) computed `q·k/√d + α·bias`, which the LAION prior needs.

    `norm` builds the pre- and output norms (`LayerNorm`'s gain is `g`, the prior's weight names;
    the U-Net's are `torch.nn.LayerNorm(bias=False)`). `vit=True` is the ViT parameterisation
    (Dosovitskiy et al. 2020; the VQ-GAN's transformer): one fused `to_qkv` projection, a biased
    output projection without norm, and no null key/value.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int = 64,
        heads: int = 8,
        kv_heads: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        causal: bool = False,
        rotary_emb: RotaryEmbedding | None = None,
        pb_relax_alpha: float | None = None,
        norm: Callable[[int], nn.Module] = LayerNorm,
        vit: bool = False,
    ):
        super().__init__()
        if kv_heads not in (1, heads) or (vit and exists(context_dim)):
            raise ValueError(f"kv_heads must be 1 or heads={heads} (and vit attention is self-attention), got {kv_heads}")
        self.heads, self.kv_heads, self.causal, self.dropout = heads, kv_heads, causal, dropout
        self.rotary_emb = rotary_emb
        self.bias_scale = 1.0 if pb_relax_alpha is None else float(pb_relax_alpha)
        inner_dim, kv_dim = dim_head * heads, dim_head * kv_heads

        self.vit = vit
        self.norm = norm(dim)
        if vit:
            self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
            self.to_out = nn.Linear(inner_dim, dim)
            return
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(default(context_dim, dim), kv_dim * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), norm(dim))

    def key_values(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotated keys and values (b, kv_heads, n, dim_head) `forward` computes for x at positions offset.."""
        return self._key_values(self.norm(x), offset)

    def _key_values(self, source: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.to_kv(source).chunk(2, dim=-1)  # (b, n, kv_heads * d) each
        k, v = (rearrange(t, "b n (g d) -> b g n d", g=self.kv_heads) for t in (k, v))
        if exists(self.rotary_emb):
            k = self.rotary_emb(k, offset=offset)
        return k, v

    def _qkv(self, x: torch.Tensor, context: torch.Tensor | None, offset: int):
        """Queries (b, heads, n, d) and this call's own keys and values (b, kv_heads, n | m, d)."""
        if self.vit:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            return (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        if exists(self.rotary_emb):
            q = self.rotary_emb(q, offset=offset)
        return (q, *self._key_values(default(context, x), offset))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ):
        """x (b, n, dim); context (b, m, context_dim) for cross-attention; mask (b, n) bool, True = may be
        attended to; attn_bias (h, n, p + n + 1).

        `past_kv` are the keys and values (b, kv_heads, p, dim_head) of p earlier positions (a cached
        prefix, see `CausalTransformer.encode_prefix`); x then holds positions p .. p + n - 1. With
        `return_kv` the result is (out, (k, v)) with x's own rotated keys and values.
        """
        b, n, _ = x.shape
        p = 0 if past_kv is None else past_kv[0].shape[-2]
        if p and exists(mask):
            raise ValueError("a key mask cannot be combined with a cached prefix (past_kv)")
        x = self.norm(x)
        q, *own_kv = self._qkv(x, context, p)
        k, v = own_kv
        if not self.vit:  # the null key/value, then any cached prefix, come first: (b, g, p + n + 1, d)
            null_k, null_v = (t.to(x.dtype).expand(b, k.shape[1], 1, -1) for t in self.null_kv.unbind(dim=0))
            k = torch.cat((null_k, past_kv[0], k) if p else (null_k, k), dim=-2)
            v = torch.cat((null_v, past_kv[1], v) if p else (null_v, v), dim=-2)
        # key/value head g serves query heads g·r .. g·r + r - 1: fold those into its query positions,
        # (b, g, r·n, d) against (b, g, j, d), instead of copying k and v once per query head
        g, j = k.shape[1], k.shape[-2]
        r = self.heads // g
        q = rearrange(q, "b (g r) n d -> b g (r n) d", g=g)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self._attn_mask(n, j, p, mask, attn_bias, q), dropout_p=self.dropout if self.training else 0.0
        )
        out = self.to_out(rearrange(out, "b g (r n) d -> b n (g r d)", r=r))
        return (out, tuple(own_kv)) if return_kv else out

    def _attn_mask(self, n, j, p, mask, attn_bias, q) -> torch.Tensor | None:
        """(b | 1, g | 1, r·n | 1, j) additive float or bool (True = attend) mask, or None."""
        g, rows = q.shape[1], q.shape[2]
        # key j holds position j - 1 (key 0 is the null key), so query i (position p + i) sees keys 0..p + i + 1
        causal = torch.ones(n, j, dtype=torch.bool, device=q.device).tril(p + 1) if self.causal else None
        attn_mask = None
        if exists(attn_bias):
            bias = (attn_bias * self.bias_scale).to(q.dtype)  # (h, n, j)
            if exists(causal):
                bias = bias.masked_fill(~causal, float("-inf"))
            attn_mask = bias.reshape(1, g, rows, j)
        elif exists(causal):
            attn_mask = causal.repeat(rows // n, 1)[None, None]  # (1, 1, r·n, j)
        if exists(mask):
            key_mask = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (b, 1, 1, j)
            if attn_mask is None or attn_mask.dtype == torch.bool:
                attn_mask = key_mask if attn_mask is None else attn_mask & key_mask
            else:
                attn_mask = attn_mask.masked_fill(~key_mask, float("-inf"))
        return attn_mask
