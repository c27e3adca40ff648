"""Which timesteps a shorter sampling run keeps (Nichol & Dhariwal 2021 §4); `GaussianDiffusion.subset` builds it.

Pure functions of integers: a spacing is a producer of timesteps, so new spacings (DDIM's stride, diffusers'
"leading" with an offset, Karras-style) need no new sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

from .spacing import uniform_timesteps as _evenly


def space_timesteps(num_timesteps: int, spacing: int | str | Sequence[int]) -> list[int]:
    """The training timesteps to keep, sorted ascending.

    `spacing` is a step count (evenly spaced, first and last kept), "ddimN" (every N // steps-th
    step from 0, as in DDIM), guided-diffusion's section counts "10,15,20" (the schedule cut into
    equal sections, each spaced evenly with that many steps), or the timesteps themselves (a list or
    tuple of distinct ints in 0 .. num_timesteps - 1, in any order).
    """
    if isinstance(spacing, (list, tuple)):
        return _explicit(num_timesteps, spacing)
    if isinstance(spacing, bool) or not isinstance(spacing, (int, str)):
        raise ValueError(f"steps must be an int, a string like 'ddim50' or '10,15,20', or a list of timesteps, got {spacing!r}")
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


def _explicit(num_timesteps: int, timesteps: Sequence[int]) -> list[int]:
    bad = [t for t in timesteps if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < num_timesteps]
    if not timesteps or bad:
        shown = bad[0] if bad else "none"
        raise ValueError(f"timesteps must be distinct ints in 0 .. {num_timesteps - 1}; got {shown!r}")
    kept = sorted(set(timesteps))
    if len(kept) != len(timesteps):
        raise ValueError(f"timesteps must be distinct; {len(timesteps) - len(kept)} repeat")
    return kept


def _parse_count(text: str, spacing: str) -> int:
    try:
        return int(text)
    except ValueError:
        accepted = "an int, 'ddimN', section counts like '10,15,20', or a list of timesteps"
        raise ValueError(f"cannot read steps {spacing!r}; accepted: {accepted}") from None


def _check_count(count: int, num_timesteps: int) -> None:
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"steps must be between 1 and the {num_timesteps} training timesteps, got {count}")


__all__ = ["space_timesteps"]
