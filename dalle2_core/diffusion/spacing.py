"""Which training timesteps a sampling run of `steps` steps visits: each spacing is a producer of timesteps, and every
sampler runs on the sub-schedule they give (`GaussianDiffusion.respace(list)`), so a spacing is never a new sampler.

- "uniform": evenly from 0 to T - 1, both ends kept (guided-diffusion's respacing; diffusers' "linspace", what
  UnCLIPScheduler does for Karlo and Kandinsky's prior).
- "leading": every (T // steps)-th from 0, shifted by a scheduler's `steps_offset` (DDPMScheduler / DDIMScheduler
  "leading", Stable Diffusion's and Kandinsky 2.2's decoder: offset 1, so the chain ends at t = 1). The noisiest
  training step is usually not visited.
- "trailing": every (T / steps)-th counted down from T - 1 (Lin et al. 2024, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed", table 2): the noisiest step is always visited, the cleanest usually not.
- "karras": the noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar) spaced as Karras et al. 2022 eq. 5 (rho 7)
  between the schedule's smallest and largest, each mapped to the training step of the nearest log-sigma: more steps
  where the noise is low.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dalle2_core.choices import SPACINGS

KARRAS_RHO = 7.0


def _check(num_timesteps: int, steps: int, offset: int) -> None:
    for name, value, low in (("num_timesteps", num_timesteps, 1), ("steps", steps, 1), ("offset", offset, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if steps > num_timesteps:
        raise ValueError(f"cannot take {steps} steps from {num_timesteps} training timesteps")


def uniform_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from 0 to num_timesteps - 1, ends included (one step keeps the noisiest)."""
    _check(num_timesteps, steps, 0)
    if steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (steps - 1)
    return [round(i * stride) for i in range(steps)]


def leading_timesteps(num_timesteps: int, steps: int, offset: int = 0) -> list[int]:
    """The training timesteps a `steps`-step "leading" sampler visits, ascending: offset, offset + k, ..., k = num_timesteps // steps."""
    _check(num_timesteps, steps, offset)
    stride = num_timesteps // steps
    kept = [i * stride + offset for i in range(steps)]
    if kept[-1] >= num_timesteps:
        most = max(n for n in range(1, num_timesteps + 1) if (n - 1) * (num_timesteps // n) + offset < num_timesteps)
        raise ValueError(
            f"{steps} leading steps with offset {offset} reach timestep {kept[-1]}, past the last one ({num_timesteps - 1}); "
            f"accepted: at most {most} steps"
        )
    return kept


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """round(T - i · T / steps) - 1 for i = 0 .. steps - 1, ascending: T - 1 always among them."""
    _check(num_timesteps, steps, 0)
    ratio = num_timesteps / steps
    return sorted({round(num_timesteps - i * ratio) - 1 for i in range(steps)})


def karras_timesteps(alphas_cumprod: Sequence[float], steps: int, rho: float = KARRAS_RHO) -> list[int]:
    """`steps` distinct training timesteps whose noise levels follow Karras et al. 2022 eq. 5 (ascending)."""
    n = len(alphas_cumprod)
    _check(n, steps, 0)
    log_sigmas = [0.5 * math.log((1 - a) / a) for a in alphas_cumprod]  # increasing with t
    if steps == 1:
        return [n - 1]
    lo, hi = math.exp(log_sigmas[0]) ** (1 / rho), math.exp(log_sigmas[-1]) ** (1 / rho)
    targets = [math.log((lo + i / (steps - 1) * (hi - lo)) ** rho) for i in range(steps)]  # ascending log-sigma
    kept, t = [], 0
    for i, target in enumerate(targets):
        while t < n - 1 and abs(log_sigmas[t + 1] - target) <= abs(log_sigmas[t] - target):
            t += 1
        # distinct and ascending, leaving room for the steps still to place
        t = min(max(t, kept[-1] + 1 if kept else 0), n - (steps - i))
        kept.append(t)
    return kept


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str, *, offset: int = 0,
                     alphas_cumprod: Sequence[float] | None = None) -> list[int]:
    """The timesteps of `spacing` (one of `choices.SPACINGS`); "karras" needs the schedule's `alphas_cumprod`."""
    if spacing == "uniform":
        return uniform_timesteps(num_timesteps, steps)
    if spacing == "leading":
        return leading_timesteps(num_timesteps, steps, offset)
    if spacing == "trailing":
        return trailing_timesteps(num_timesteps, steps)
    if spacing == "karras":
        if alphas_cumprod is None or len(alphas_cumprod) != num_timesteps:
            raise ValueError("karras spacing needs the schedule's alphas_cumprod")
        return karras_timesteps(alphas_cumprod, steps)
    raise ValueError(f"unknown spacing {spacing!r}; accepted: {', '.join(SPACINGS)}")


def steps_for(diffusion, steps, spacing: str | None, offset: int = 0):
    """What `sample(..., steps=)` takes for a run of `steps` on `diffusion` with `spacing`: a count stays a count for
    "uniform" (or no spacing), becomes the spacing's timesteps otherwise; "ddimN", section counts and explicit lists
    are kept as given."""
    if spacing in (None, "uniform") or isinstance(steps, bool) or not isinstance(steps, int):
        return steps
    return spaced_timesteps(diffusion.num_timesteps, steps, spacing, offset=offset, alphas_cumprod=diffusion.alphas_cumprod.tolist())


__all__ = [
    "steps_for","KARRAS_RHO", "karras_timesteps", "leading_timesteps", "spaced_timesteps", "trailing_timesteps", "uniform_timesteps"]
