"""Multi-query self-attention with a learned null key/value, rotary embedding and T5 relative bias."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_core.helpers import exists
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
    """Pre-norm multi-query attention (Shazeer 2019): `heads` queries share one key/value head.

    A learned null key/value is prepended so every query can attend to "nothing" (needed when all
    real keys are masked, and what classifier-free guidance falls back on). Rotary embedding is
    applied to q and k before the null key/value joins. `attn_bias` (h, n, n + 1) is added to the
    logits multiplied by `pb_relax_alpha` when given: the 1.1.0-era "PB-relax" numerics
    (Ding et al. 2021, CogView sec. 2.4) computed `q·k/√d + α·bias`, which the LAION prior needs.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int = 64,
        heads: int = 8,
        dropout: float = 0.0,
        causal: bool = False,
        rotary_emb: RotaryEmbedding | None = None,
        pb_relax_alpha: float | None = None,
    ):
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.rotary_emb = rotary_emb
        self.bias_scale = 1.0 if pb_relax_alpha is None else float(pb_relax_alpha)
        inner_dim = dim_head * heads

        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), LayerNorm(dim))

    def key_values(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotated keys and values (b, n, dim_head) `forward` computes for x at positions offset.."""
        return self._key_values(self.norm(x), offset)

    def _key_values(self, x_normed: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.to_kv(x_normed).chunk(2, dim=-1)  # (b, n, d) each
        if exists(self.rotary_emb):
            k = self.rotary_emb(k, offset=offset)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ):
        """x (b, n, dim); mask (b, n) bool, True = may be attended to; attn_bias (h, n, p + n + 1).

        `past_kv` are the keys and values (b, p, dim_head) of p earlier positions (a cached prefix,
        see `CausalTransformer.encode_prefix`); x then holds positions p .. p + n - 1. With
        `return_kv` the result is (out, (k, v)) with x's own rotated keys and values.
        """
        b, n, _ = x.shape
        p = 0 if past_kv is None else past_kv[0].shape[1]
        if p and exists(mask):
            raise ValueError("a key mask cannot be combined with a cached prefix (past_kv)")
        x = self.norm(x)
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        if exists(self.rotary_emb):
            q = self.rotary_emb(q, offset=p)
        k, v = own_kv = self._key_values(x, p)

        null_k, null_v = (t.to(x.dtype).expand(b, 1, -1) for t in self.null_kv.unbind(dim=0))
        if p:
            k, v = torch.cat((null_k, past_kv[0], k), dim=1), torch.cat((null_v, past_kv[1], v), dim=1)
        else:
            k, v = torch.cat((null_k, k), dim=1), torch.cat((null_v, v), dim=1)  # (b, p + n + 1, d)
        # one key/value head serves every query head: fold the heads into the query positions,
        # (b, 1, h·n, d) against (b, 1, p + n + 1, d), instead of copying k and v once per head
        h, j = self.heads, k.shape[1]
        q = rearrange(q, "b h n d -> b 1 (h n) d")
        k, v = k[:, None], v[:, None]

        # key j holds position j - 1 (key 0 is the null key), so query i (position p + i) sees keys 0..p + i + 1
        causal = torch.ones(n, j, dtype=torch.bool, device=x.device).tril(p + 1) if self.causal else None
        attn_mask = None  # (b | 1, 1, h·n | 1, j): additive float or bool (True = attend)
        if exists(attn_bias):
            bias = (attn_bias * self.bias_scale).to(q.dtype)  # (h, n, j)
            if exists(causal):
                bias = bias.masked_fill(~causal, float("-inf"))
            attn_mask = bias.reshape(1, 1, h * n, j)
        elif exists(causal):
            attn_mask = causal.repeat(h, 1)[None, None]  # (1, 1, h·n, j)
        if exists(mask):
            key_mask = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (b, 1, 1, j)
            if attn_mask is None or attn_mask.dtype == torch.bool:
                attn_mask = key_mask if attn_mask is None else attn_mask & key_mask
            else:
                attn_mask = attn_mask.masked_fill(~key_mask, float("-inf"))

        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = self.to_out(rearrange(out, "b 1 (h n) d -> b n (h d)", h=h))
        return (out, own_kv) if return_kv else out
