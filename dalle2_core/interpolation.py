"""Paths and mixes of CLIP embeddings on the unit sphere (unCLIP sec. 3.2: interpolations and mixes of images and text)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dalle2_core.helpers import l2norm


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between l2-normalised embeddings (Shoemake 1985; unCLIP Sec. 3.2).

    `a`, `b` are (..., d); `t` in [0, 1] is a float or broadcasts against (...,). Rows whose ends
    (nearly) coincide fall back to linear interpolation; the result is renormalised.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs embeddings of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = l2norm(a), l2norm(b)
    t = torch.as_tensor(t, device=a.device, dtype=a.dtype)
    t = t[..., None] if t.ndim > 0 else t  # (..., 1) against (..., d)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-3  # float32 arccos can't resolve smaller angles; lerp is within 1e-7 there
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    out = torch.where(
        near,
        (1 - t) * a + t * b,
        (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / safe_sin,
    )
    return l2norm(out)


def mix_embeddings(embeds: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A weighted mix (1, d) of embeddings (n, d) on the unit sphere: the renormalised weighted sum of their
    directions. Two embeddings with weights 1 - t and t lie between them on the great circle, as slerp's do."""
    w = torch.as_tensor(list(weights), dtype=embeds.dtype, device=embeds.device)
    if w.shape != (embeds.shape[0],) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"mix weights must be one finite number > 0 per embedding ({embeds.shape[0]}), got {list(weights)}")
    return l2norm((w[:, None] * l2norm(embeds)).sum(dim=0, keepdim=True))


__all__ = ["mix_embeddings", "slerp"]
