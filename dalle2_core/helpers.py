"""Small tensor and value helpers shared by the whole library."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def exists(val) -> bool:
    return val is not None


def default(val, d):
    if exists(val):
        return val
    return d() if callable(d) else d


def cast_tuple(val, length: int | None = None) -> tuple:
    """`val` as a tuple; a scalar is repeated `length` times (once if no length)."""
    out = tuple(val) if isinstance(val, (tuple, list)) else (val,) * default(length, 1)
    if exists(length) and len(out) != length:
        raise ValueError(f"expected {length} values, got {len(out)}: {out!r}")
    return out


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode for the block, then back in the mode it was in (also on errors)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def randn(shape, *, generator=None, device=None, dtype=None) -> torch.Tensor:
    """`torch.randn`, where `generator` may also be one generator per sample: each then draws its own
    equal share of the rows, so a sample's noise is the same whether it is drawn alone or in a batch.

    A generator may also be any object with a `randn(shape, device, dtype)` method (a noise source,
    e.g. `diffusion.RecordedNoise` replaying another implementation's draws).
    """
    if isinstance(generator, (list, tuple)):
        rows, n = shape[0], len(generator)
        if n == 0 or rows % n:
            raise ValueError(f"{n} generators cannot split {rows} rows evenly; pass one generator or one per sample")
        return torch.cat([randn((rows // n, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if not callable(getattr(generator, "randn", None)):
        raise TypeError(
            f"generator must be a torch.Generator, a list of them, or an object with a randn(shape, device, dtype) method; "
            f"got {type(generator).__name__}"
        )
    return generator.randn(tuple(shape), device=device, dtype=dtype)


def resize(images: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Antialiased `F.interpolate` (align_corners False) to `size`; half and bfloat16 images are resized in float32
    (the CPU has no reduced-precision antialiased kernels) and come back in their own dtype."""
    x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    return F.interpolate(x, size=cast_tuple(size, 2), mode=mode, antialias=True, align_corners=False).to(images.dtype)


def l2norm(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(t, dim=dim)


def normalize_neg_one_to_one(img: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (the public API) to [-1, 1] (the diffusion space)."""
    return img * 2 - 1


def unnormalize_zero_to_one(img: torch.Tensor) -> torch.Tensor:
    return (img + 1) * 0.5


__all__ = [
    "eval_mode",
    "resize",
    "cast_tuple",
    "default",
    "exists",
    "l2norm",
    "normalize_neg_one_to_one",
    "unnormalize_zero_to_one",
]
