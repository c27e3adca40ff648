"""SwiGLU feed-forward block (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dalle2_core.nn.norm import LayerNorm


def _swiglu(x: torch.Tensor) -> torch.Tensor:
    x, gate = x.chunk(2, dim=-1)
    return x * F.silu(gate)


class SwiGLU(nn.Module):
    """x * SiLU(gate), the two halves of the last dim (Shazeer 2020, eq. 6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            # SiLU(gate) is recomputed in the backward pass instead of kept (same numbers):
            # the widest activation of the prior's transformer
            return checkpoint(_swiglu, x, use_reentrant=False)
        return _swiglu(x)


class FeedForward(nn.Sequential):
    """Pre-norm SwiGLU MLP; `post_activation_norm` adds NormFormer's norm after the GLU (Shleifer et al. 2021).

    Kept as a flat Sequential (norm, proj in, GLU, norm, dropout, proj out) so that state-dict keys
    line up index for index with the LAION prior checkpoints.
    """

    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0, post_activation_norm: bool = False):
        inner_dim = int(mult * dim)
        super().__init__(
            LayerNorm(dim),
            nn.Linear(dim, inner_dim * 2, bias=False),
            SwiGLU(),
            LayerNorm(inner_dim) if post_activation_norm else nn.Identity(),
            nn.Dropout(dropout),
            nn.Linear(inner_dim, dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        # inference: SiLU(gate) and the product are written into the projection's own buffer, which the
        # output projection reads in place through a strided 2-d view (the same bits; no temporaries of
        # the GLU's width, the widest activations of the prior's text encoding)
        projected = self[1](self[0](x))
        h, gate = projected.reshape(-1, projected.shape[-1]).chunk(2, dim=-1)  # (m, inner) views, row stride 2 inner
        h.mul_(F.silu(gate, inplace=True))
        return self[5](self[4](self[3](h))).reshape(*x.shape[:-1], -1)  # (..., dim)
