"""ADM's pre-activation resnet block (Dhariwal & Nichol 2021, App. A), which also does the down/up-sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESAMPLE = (None, "down", "up")


class AdmResBlock(nn.Module):
    """GroupNorm -> SiLU -> [resample] -> conv3x3 -> time conditioning -> GroupNorm -> SiLU -> dropout -> conv3x3, plus a skip.

    Time conditioning is AdaGN (`scale_shift`, ADM sec. 3: GroupNorm(h)·(1 + scale) + shift, the
    embedding projected to 2 × channels) or, without it, the projected embedding added before the
    second norm (DDPM). `resample="down"` average-pools by 2 and `"up"` repeats pixels ×2 (nearest),
    applied after the first activation and to the skip (ADM's `resblock_updown`). The skip is a 1×1
    conv when the widths differ.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        time_dim: int,
        *,
        scale_shift: bool = True,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        resample: str | None = None,
    ):
        super().__init__()
        if resample not in RESAMPLE:
            raise ValueError(f"unknown resample {resample!r}; accepted: None, 'down', 'up'")
        self.scale_shift, self.resample = scale_shift, resample
        self.norm1 = nn.GroupNorm(groups, dim_in, eps=eps)
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, dim_out * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, dim_out, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (b, dim_in, h, w), emb (b, time_dim) -> (b, dim_out, h', w') with h' = h/2, h or 2h."""
        h = F.silu(self.norm1(x))
        h = self.conv1(self._resample(h))
        t = self.time_proj(F.silu(emb))[:, :, None, None]  # (b, c or 2c, 1, 1)
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = self._resample(x)
        return (skip if self.skip is None else self.skip(skip)) + h


__all__ = ["AdmResBlock"]
