"""Self-supervised image objectives on CLIP's visual tower: SimCLR (DeCLIP) and SimSiam (SLIP).

The heads own only their projector / predictor; the visual encoder is passed in as a function so
its weights are registered once, inside the CLIP.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..helpers import l2norm

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)


def _uniform(b: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(b, device=like.device, dtype=like.dtype) * (high - low) + low


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype)
    return torch.einsum("bchw,c->bhw", images, weights)[:, None]  # (b, 1, h, w)


def random_resized_crop_and_flip(
    images: torch.Tensor, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """A different random crop (area `scale`, aspect `ratio`) and horizontal flip per image, resized back."""
    b = images.shape[0]
    area = _uniform(b, *scale, images)
    aspect = torch.exp(_uniform(b, math.log(ratio[0]), math.log(ratio[1]), images))
    # crop width / height as fractions of the image side
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand_like(w) * 2 - 1) * (1 - w)
    cy = (torch.rand_like(h) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand_like(w) < 0.5, -1.0, 1.0).to(w)
    zero = torch.zeros_like(w)
    theta = torch.stack((torch.stack((w * flip, zero, cx), -1), torch.stack((zero, h, cy), -1)), 1)  # (b, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_color_jitter(
    images: torch.Tensor, strength: float = 0.4, p_jitter: float = 0.8, p_gray: float = 0.2
) -> torch.Tensor:
    """Per-image brightness / contrast / saturation jitter and random greyscale (SimCLR's colour distortion)."""
    if images.shape[1] != 3:
        return images  # colour distortion is only defined for RGB
    b = images.shape[0]
    apply = (torch.rand(b, device=images.device) < p_jitter).to(images.dtype)

    def factor() -> torch.Tensor:
        f = _uniform(b, 1 - strength, 1 + strength, images)
        return (1 + apply * (f - 1))[:, None, None, None]  # (b, 1, 1, 1); 1 where not applied

    x = images * factor()
    mean = _grayscale(x).mean(dim=(-2, -1), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = _grayscale(x)
    x = (x - gray) * factor() + gray
    to_gray = (torch.rand(b, device=images.device) < p_gray)[:, None, None, None]
    x = torch.where(to_gray, _grayscale(x).expand_as(x), x)
    return x.clamp(0, 1)


def augment(images: torch.Tensor) -> torch.Tensor:
    """SimCLR-style view of [0, 1] images: random resized crop, flip, colour jitter, greyscale."""
    return random_color_jitter(random_resized_crop_and_flip(images))


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1): each view must pick its partner among all 2b - 1 others."""
    n = a.shape[0]
    z = l2norm(torch.cat((a, b)))  # (2n, d)
    logits = z @ z.t() / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    partner = torch.cat((torch.arange(n, 2 * n), torch.arange(n))).to(z.device)
    return F.cross_entropy(logits, partner)


class SimCLRHead(nn.Module):
    """SimCLR on two augmented views (DeCLIP's image self-supervision)."""

    def __init__(self, dim: int, projection_dim: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, projection_dim))

    def forward(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        z1 = self.projector(encode(augment(images)))
        z2 = self.projector(encode(augment(images)))
        return nt_xent(z1, z2, self.temperature)


class SimSiamHead(nn.Module):
    """SimSiam (Chen & He 2021): predictor + stop-gradient, negative cosine (SLIP's image objective)."""

    def __init__(self, dim: int, projection_dim: int):
        super().__init__()
        hidden = max(projection_dim // 4, 4)  # the paper's bottleneck predictor
        self.projector = nn.Sequential(
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(),
            nn.Linear(dim, projection_dim, bias=False),
            nn.BatchNorm1d(projection_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(projection_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, projection_dim),
        )

    def forward(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.training and images.shape[0] < 2:
            raise ValueError(f"simsiam needs a batch of at least 2 images (BatchNorm), got {images.shape[0]}")
        z1 = self.projector(encode(augment(images)))
        z2 = self.projector(encode(augment(images)))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # eq. 2: symmetric negative cosine with the targets' gradient stopped
        d1 = -F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
        d2 = -F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
        return (d1 + d2) / 2


def visual_ssl_head(kind: str, dim: int, projection_dim: int, temperature: float) -> nn.Module:
    if kind == "simclr":
        return SimCLRHead(dim, projection_dim, temperature)
    if kind == "simsiam":
        return SimSiamHead(dim, projection_dim)
    raise ValueError(f"visual_ssl_type {kind!r} is not one of ('simclr', 'simsiam')")


__all__ = [
    "SimCLRHead",
    "SimSiamHead",
    "augment",
    "nt_xent",
    "random_color_jitter",
    "random_resized_crop_and_flip",
    "visual_ssl_head",
]
