"""Sampling that starts from a picture: SDEdit (Meng et al. 2022) and inpainting, for any cascade stage.

`sample_stage` is `sample` with an optional `edit`: `init` and `strength` < 1 start from the picture noised
to that fraction of the (respaced) schedule and sample only the rest; `known` and `keep` (True = kept) inpaint,
either by RePaint on any network, or (`blend`) with a network trained for inpainting, whose kept region is put
back after every step at the level of the next one (`blended_sample`). Everything is in the stage's own space
([-1, 1] pixels or a latent); the caller resizes and encodes the picture and puts the exact kept pixels back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..helpers import exists
from .gaussian import GaussianDiffusion, ModelFn
from .repaint import repaint_sample
from .samplers import sample

STRENGTH_ROUNDINGS = ("round", "floor")


class StageEdit(NamedTuple):
    """A picture to start a stage from, in the stage's space: SDEdit (`init`, `strength`) or inpainting (`known`, `keep`)."""

    init: torch.Tensor | None = None  # (b, c, h, w)
    strength: float = 1.0
    known: torch.Tensor | None = None  # (b, c, h, w)
    keep: torch.Tensor | None = None  # (b, 1, h, w) bool, True = kept
    rounding: str = "round"  # how `strength` becomes a step count (`redrawn_steps`)
    blend: bool = False  # inpainting with an inpainting network (`blended_sample`) instead of RePaint


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


def redrawn_steps(total: int, strength: float, rounding: str = "round") -> int:
    """How many of `total` steps SDEdit at `strength` re-draws: round(strength · total), or with "floor"
    int(strength · total), as diffusers' img2img pipelines count them (`get_timesteps`)."""
    if rounding not in STRENGTH_ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(STRENGTH_ROUNDINGS)}")
    return min(int(strength * total), total) if rounding == "floor" else round(strength * total)


def truncated_diffusion(diffusion: GaussianDiffusion, strength: float, rounding: str = "round") -> GaussianDiffusion | None:
    """The first `redrawn_steps(T, strength, rounding)` steps of `diffusion`: sampling from its last index re-draws
    that fraction of the schedule (SDEdit). None for no step. A subset of the same diffusion (its numerics options
    kept), so every sampler runs on it."""
    keep = redrawn_steps(diffusion.num_timesteps, strength, rounding)
    return diffusion.subset(range(keep)) if keep else None


def redraws_nothing(diffusion: GaussianDiffusion, steps: int | str | None, strength: float, rounding: str = "round") -> bool:
    """Whether SDEdit at `strength` keeps the picture as it is (no step of the respaced schedule is re-drawn)."""
    return redrawn_steps(diffusion.respace(steps).num_timesteps, strength, rounding) == 0


@torch.no_grad()
def blended_sample(model: ModelFn, diffusion: GaussianDiffusion, noise: torch.Tensor, known: torch.Tensor, keep: torch.Tensor, *,
                   steps=None, on_step=None, **opts) -> torch.Tensor:
    """Inpainting with a network trained for it (it sees the kept picture and the mask among its inputs): any sampler,
    and after each step the kept region is `known` noised with the run's initial `noise` to the level x then sits at,
    exactly `known` after the last (diffusers' Kandinsky 2.2 and Stable Diffusion inpainting pipelines)."""
    diffusion = diffusion.respace(steps)

    def reblend(i: int, total: int, x: torch.Tensor) -> torch.Tensor:
        index = total - 2 - i  # where x sits now (the samplers' convention); -1: x_0
        kept = known if index < 0 else diffusion.q_sample(known, diffusion.timesteps(index, x), noise=noise)
        x = torch.where(keep, kept.to(x.dtype), x)
        replaced = on_step(i, total, x) if exists(on_step) else None
        return x if replaced is None else replaced

    return sample(model, diffusion, noise, on_step=reblend, **opts)


def sample_stage(model: ModelFn, diffusion: GaussianDiffusion, noise: torch.Tensor, *, edit: StageEdit | None = None,
                 resample_times: int = 5, **opts) -> torch.Tensor:
    """x_0 of one stage: `sample(model, diffusion, noise, **opts)` (its keywords: sampler, steps, eta, denoise_fn,
    generator, on_step), or from the picture of `edit` (strength 0 returns `edit.init` itself)."""
    if edit is None or (edit.init is None and edit.known is None):
        return sample(model, diffusion, noise, **opts)
    if exists(edit.known) and edit.blend:
        return blended_sample(model, diffusion, noise, edit.known, edit.keep, **opts)
    if exists(edit.known):
        return repaint_sample(model, diffusion, noise, edit.known, edit.keep, resample_times=resample_times, **opts)
    truncated = truncated_diffusion(diffusion.respace(opts.pop("steps", None)), edit.strength, edit.rounding)
    if truncated is None:
        return edit.init
    start = torch.full((noise.shape[0],), truncated.num_timesteps - 1, device=noise.device, dtype=torch.long)
    return sample(model, truncated, truncated.q_sample(edit.init, start, noise=noise), **opts)


__all__ = ["STRENGTH_ROUNDINGS", "StageEdit", "blended_sample", "check_picture", "redrawn_steps", "redraws_nothing", "sample_stage",
           "truncated_diffusion"]
