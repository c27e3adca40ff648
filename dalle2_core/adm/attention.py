"""GLIDE's attention block: pixels attend jointly to [context tokens || pixels] in one softmax.

GLIDE (Nichol et al. 2022 sec. 2.3 / App. A) and the unCLIP decoder project the text tokens to
extra keys and values of every attention layer ("encoder_kv"): one softmax runs over the context
tokens and the pixels together, so self-attention and cross-attention share the heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# the additive logit of a masked context token (GLIDE and Karlo use -10000, not -inf)
MASKED_LOGIT = -10000.0


class ContextKV(NamedTuple):
    """Every attention layer's context keys and values, projected once per sampling run (they depend on
    neither x_t nor t): `kv[i]` is layer i's (k, v), each (b, heads, n, head_dim)."""

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    batch: int


class JointAttention(nn.Module):
    """GroupNorm(x) -> q from pixels; k, v from [context ‖ pixels]; SDPA; output projection; residual."""

    def __init__(self, dim: int, context_dim: int, *, head_dim: int = 64, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not a multiple of head_dim={head_dim}")
        self.heads = dim // head_dim
        self.norm = nn.GroupNorm(groups, dim, eps=eps)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.context_to_k = nn.Linear(context_dim, dim)
        self.context_to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.kv_index = 0  # this layer's entry in a `ContextKV` (AdmUnet numbers its layers)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context's keys and values (b, heads, n, head_dim), as `forward` computes them."""
        return self._split(self.context_to_k(context)), self._split(self.context_to_v(context))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return rearrange(t, "b n (h d) -> b h n d", h=self.heads)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | ContextKV, context_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (b, c, h, w), context (b, n, context_dim) or its projected `ContextKV`, context_bias (b, n) additive
        logits -> (b, c, h, w)."""
        b, c, height, width = x.shape
        h = rearrange(self.norm(x), "b c y x -> b (y x) c")
        q = self._split(self.to_q(h))
        context_k, context_v = context.kv[self.kv_index] if isinstance(context, ContextKV) else self.context_kv(context)
        k = torch.cat([context_k, self._split(self.to_k(h))], dim=2)  # (b, heads, n + hw, d)
        v = torch.cat([context_v, self._split(self.to_v(h))], dim=2)
        bias = None
        if context_bias is not None:
            pixels = context_bias.new_zeros(b, height * width)
            bias = torch.cat([context_bias, pixels], dim=1)[:, None, None, :]  # (b, 1, 1, n + hw)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (b, heads, hw, d)
        out = self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        return x + rearrange(out, "b (y x) c -> b c y x", y=height, x=width)


def context_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean context mask (b, n), True = attend, as additive logits (b, n): 0 or `MASKED_LOGIT`."""
    return (1.0 - mask.to(dtype)) * MASKED_LOGIT


__all__ = ["MASKED_LOGIT", "ContextKV", "JointAttention", "context_bias"]
