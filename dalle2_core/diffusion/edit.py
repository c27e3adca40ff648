"""Sampling that starts from a picture: SDEdit (Meng et al. 2022) and RePaint inpainting, for any cascade stage.

`sample_stage` is `sample` with an optional `edit`: `init` and `strength` < 1 start from the picture noised
to that fraction of the (respaced) schedule and sample only the rest; `known` and `keep` (True = kept) run
RePaint so the kept region is the picture's. Everything is in the stage's own space ([-1, 1] pixels or a
latent); the caller resizes and encodes the picture and puts the exact kept pixels back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..helpers import exists
from .gaussian import GaussianDiffusion, ModelFn
from .repaint import repaint_sample
from .samplers import sample


class StageEdit(NamedTuple):
    """A picture to start a stage from, in the stage's space: SDEdit (`init`, `strength`) or RePaint (`known`, `keep`)."""

    init: torch.Tensor | None = None  # (b, c, h, w)
    strength: float = 1.0
    known: torch.Tensor | None = None  # (b, c, h, w)
    keep: torch.Tensor | None = None  # (b, 1, h, w) bool, True = kept


def check_picture(init_image, strength: float, inpaint_image, inpaint_mask) -> torch.Tensor | None:
    """Refuses an inconsistent start picture (SDEdit's `init_image` and `strength`, or RePaint's `inpaint_image`
    with its bool `inpaint_mask` (b, h, w)); returns `init_image`, or None when strength 1 ignores it."""
    if exists(inpaint_image) != exists(inpaint_mask):
        raise ValueError("inpainting needs both inpaint_image (b, c, h, w) and inpaint_mask (b, h, w)")
    if exists(inpaint_mask) and (inpaint_mask.dtype != torch.bool or inpaint_mask.ndim != 3):
        raise ValueError(f"inpaint_mask must be a bool tensor (b, h, w), got {inpaint_mask.dtype} {tuple(inpaint_mask.shape)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (the fraction of the schedule re-drawn), got {strength!r}")
    if exists(inpaint_image) and exists(init_image):
        raise ValueError("give init_image (SDEdit) or inpaint_image (RePaint), not both")
    return init_image if strength < 1.0 else None  # strength 1 starts from pure noise: the image plays no part


def truncated_diffusion(diffusion: GaussianDiffusion, strength: float) -> GaussianDiffusion | None:
    """The first round(strength · T) steps of `diffusion`: sampling from its last index re-draws that fraction of
    the schedule (SDEdit). None for no step. A subset of the same diffusion (its numerics options kept), so every
    sampler runs on it."""
    keep = round(strength * diffusion.num_timesteps)
    return diffusion.subset(range(keep)) if keep else None


def redraws_nothing(diffusion: GaussianDiffusion, steps: int | str | None, strength: float) -> bool:
    """Whether SDEdit at `strength` keeps the picture as it is (no step of the respaced schedule is re-drawn)."""
    return round(strength * diffusion.respace(steps).num_timesteps) == 0


def sample_stage(model: ModelFn, diffusion: GaussianDiffusion, noise: torch.Tensor, *, edit: StageEdit | None = None,
                 resample_times: int = 5, **opts) -> torch.Tensor:
    """x_0 of one stage: `sample(model, diffusion, noise, **opts)` (its keywords: sampler, steps, eta, denoise_fn,
    generator, on_step), or from the picture of `edit` (strength 0 returns `edit.init` itself)."""
    if edit is None or (edit.init is None and edit.known is None):
        return sample(model, diffusion, noise, **opts)
    if exists(edit.known):
        return repaint_sample(model, diffusion, noise, edit.known, edit.keep, resample_times=resample_times, **opts)
    truncated = truncated_diffusion(diffusion.respace(opts.pop("steps", None)), edit.strength)
    if truncated is None:
        return edit.init
    start = torch.full((noise.shape[0],), truncated.num_timesteps - 1, device=noise.device, dtype=torch.long)
    return sample(model, truncated, truncated.q_sample(edit.init, start, noise=noise), **opts)


__all__ = ["StageEdit", "check_picture", "redraws_nothing", "sample_stage", "truncated_diffusion"]
