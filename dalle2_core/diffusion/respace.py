"""Timestep respacing (Nichol & Dhariwal 2021 §4): sample with fewer steps than the network was trained on."""

from __future__ import annotations

import torch

from .gaussian import GaussianDiffusion


def _evenly(num_timesteps: int, count: int) -> list[int]:
    """`count` timesteps from 0 to num_timesteps - 1, ends included (one step keeps the noisiest)."""
    if count == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


def space_timesteps(num_timesteps: int, spacing: int | str) -> list[int]:
    """The training timesteps to keep, sorted ascending.

    `spacing` is a step count (evenly spaced, first and last kept), "ddimN" (every N // steps-th
    step from 0, as in DDIM), or guided-diffusion's section counts "10,15,20" (the schedule cut into
    equal sections, each spaced evenly with that many steps).
    """
    if isinstance(spacing, bool) or not isinstance(spacing, (int, str)):
        raise ValueError(f"steps must be an int or a string like 'ddim50' or '10,15,20', got {spacing!r}")
    if isinstance(spacing, str) and spacing.startswith("ddim"):
        count = _parse_count(spacing[len("ddim"):], spacing)
        _check_count(count, num_timesteps)
        # the DDIM paper's stride; some counts have no exact stride, then fall back to even spacing
        stride = num_timesteps // count
        kept = list(range(0, num_timesteps, stride))[:count]
        return kept if len(kept) == count else _evenly(num_timesteps, count)
    if isinstance(spacing, str):
        sections = [_parse_count(part, spacing) for part in spacing.split(",")]
    else:
        sections = [spacing]
    if len(sections) == 1:
        _check_count(sections[0], num_timesteps)
        return _evenly(num_timesteps, sections[0])

    size, extra = divmod(num_timesteps, len(sections))
    kept, start = [], 0
    for i, count in enumerate(sections):
        section = size + (1 if i < extra else 0)
        if not 1 <= count <= section:
            raise ValueError(f"cannot take {count} steps from a section of {section} timesteps in {spacing!r}")
        kept += [start + t for t in _evenly(section, count)] if count > 1 else [start]
        start += section
    return kept


def _parse_count(text: str, spacing: str) -> int:
    try:
        return int(text)
    except ValueError:
        accepted = "an int, 'ddimN' or section counts like '10,15,20'"
        raise ValueError(f"cannot read steps {spacing!r}; accepted: {accepted}") from None


def _check_count(count: int, num_timesteps: int) -> None:
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"steps must be between 1 and the {num_timesteps} training timesteps, got {count}")


def respaced_diffusion(diffusion: GaussianDiffusion, spacing: int | str) -> GaussianDiffusion:
    """A diffusion over the kept timesteps with exactly the same alpha_bar there (its betas are the ratios).

    A float32 schedule is respaced as UnCLIPScheduler steps it: beta = 1 - alpha_bar_t / alpha_bar_prev
    in float32, except that a step onto the timestep just before keeps the schedule's own beta.
    """
    kept = space_timesteps(diffusion.num_timesteps, spacing)
    if kept == list(range(diffusion.num_timesteps)):
        return diffusion
    options = dict(
        objective=diffusion.objective,
        learned_variance=diffusion.learned_variance,
        timestep_map=diffusion.timestep_map[kept],  # composes with an earlier respacing
        posterior_log_variance=diffusion.posterior_log_variance,
    )
    if not diffusion.float32_schedule:
        return GaussianDiffusion(alphas_cumprod=diffusion.alphas_cumprod[kept], **options)
    alphas_cumprod = diffusion.alphas_cumprod[kept].to(torch.float32)  # exact: the values are float32 already
    betas = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    previous = torch.tensor([-1] + kept[:-1], device="cpu")
    adjacent = torch.tensor(kept, device="cpu") - 1 == previous  # (steps,)
    betas = torch.where(adjacent, diffusion.betas[kept].to(torch.float32), betas)
    return GaussianDiffusion(betas, alphas_cumprod=alphas_cumprod, float32_schedule=True, **options)


__all__ = ["respaced_diffusion", "space_timesteps"]
