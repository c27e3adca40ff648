"""RePaint inpainting (Lugmayr et al. 2022, Algorithm 1) over the shared diffusion steps.

At every reverse step the known region is replaced by the data forward-diffused to the same level
(`q_sample`), and each step is repeated `resample_times` times, jumping back one step with the
forward transition (`q_sample_step`) so the generated region can harmonise with the known one.
"""

from __future__ import annotations

import torch

from ..choices import INPAINT_SAMPLERS
from ..errors import SettingError
from ..helpers import exists
from .gaussian import DenoiseFn, GaussianDiffusion, ModelFn
from .samplers import ddim_step, p_sample_step, randn_like


def check_inpaint_sampler(sampler: str) -> None:
    """RePaint runs on the ancestral and DDIM steps only (`choices.INPAINT_SAMPLERS`): the one place this is checked."""
    if sampler not in INPAINT_SAMPLERS:
        raise SettingError("sampler", f"inpainting supports samplers {', '.join(INPAINT_SAMPLERS)}; got {sampler!r}")


@torch.no_grad()
def repaint_sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    sampler: str = "ddpm",
    steps: int | str | None = None,
    eta: float = 0.0,
    resample_times: int = 5,
    denoise_fn: DenoiseFn | None = None,
    generator: torch.Generator | None = None,
    on_step=None,
) -> torch.Tensor:
    """x_0 whose `mask` (True = known, broadcastable to x) region equals `known` exactly.

    `sampler` is "ddpm" (ancestral, as in the paper) or "ddim"; `steps` respaces the diffusion.
    `on_step(i, total, x)` runs after each completed step, as for the other samplers.
    """
    check_inpaint_sampler(sampler)
    if resample_times < 1:
        raise ValueError(f"inpaint_resample_times must be >= 1, got {resample_times}")
    if sampler == "ddpm" and eta != 0:
        raise ValueError(f"eta applies to the ddim sampler only; got eta={eta!r} with sampler 'ddpm'")
    diffusion = diffusion.respace(steps)

    def reverse_step(x, t):
        if sampler == "ddim":
            return ddim_step(model, diffusion, x, t, eta=eta, denoise_fn=denoise_fn, generator=generator)[0]
        return p_sample_step(model, diffusion, x, t, denoise_fn=denoise_fn, generator=generator)[0]

    x = noise
    total = diffusion.num_timesteps
    for i, index in enumerate(reversed(range(total))):
        t = diffusion.timesteps(index, x)
        for r in range(resample_times):
            unknown_prev = reverse_step(x, t)  # x_{t-1} for the region to fill
            if index > 0:
                known_prev = diffusion.q_sample(known, diffusion.timesteps(index - 1, x), randn_like(known, generator))
            else:
                known_prev = known
            x = torch.where(mask, known_prev, unknown_prev)
            if index > 0 and r < resample_times - 1:
                x = diffusion.q_sample_step(x, t, randn_like(x, generator))  # jump back to level t
        if exists(on_step):
            replaced = on_step(i, total, x)
            x = x if replaced is None else replaced
    return torch.where(mask, known, x)


__all__ = ["INPAINT_SAMPLERS", "check_inpaint_sampler", "repaint_sample"]
