"""Rotary position embedding (Su et al. 2021, RoFormer, eq. 34), interleaved-pair convention."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates the first `dim` features of queries/keys by position-dependent angles (RoFormer eq. 34).

    Pairs are adjacent features (x0, x1), (x2, x3), ... with frequencies theta^(-2i/dim), the
    convention of `rotary-embedding-torch` that the LAION prior was trained with. Frequencies are
    computed on the fly in float32, so the module holds no state and casting it loses nothing.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"rotary dim must be even and >= 2, got {dim}")
        self.dim, self.theta = dim, theta

    def angles(self, seq_len: int, device: torch.device, offset: int = 0) -> torch.Tensor:
        """(seq_len, dim) angles of positions offset.., each frequency repeated for the two features of its pair."""
        inv_freq = self.theta ** (-torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim)
        positions = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
        return angles.repeat_interleave(2, dim=-1)  # (n, dim)

    def forward(self, t: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate `t` (..., n, d), positions offset..offset+n-1 along dim -2; features past `dim` pass through."""
        if t.shape[-1] < self.dim:
            raise ValueError(f"rotary dim {self.dim} exceeds the feature size {t.shape[-1]}")
        angles = self.angles(t.shape[-2], t.device, offset)
        rot, rest = t[..., : self.dim].float(), t[..., self.dim :]
        pairs = rot.unflatten(-1, (-1, 2))  # (..., n, dim / 2, 2)
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., n, dim)
        rot = rot * angles.cos() + rotated_half * angles.sin()
        return torch.cat((rot.to(t.dtype), rest), dim=-1)
