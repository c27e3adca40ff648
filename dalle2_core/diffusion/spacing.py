"""diffusers' "leading" timestep spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2).

`steps` timesteps every `num_timesteps // steps`-th one from 0, shifted by `offset` (a scheduler's `steps_offset`):
DDPMScheduler and DDIMScheduler with `timestep_spacing="leading"`, the schedulers of latent-diffusion models
(Stable Diffusion, Kandinsky 2.2: offset 1, so the chain ends at t = 1). Unlike `respace.space_timesteps`,
the noisiest training step is usually not among them.
"""

from __future__ import annotations


def leading_timesteps(num_timesteps: int, steps: int, offset: int = 0) -> list[int]:
    """The training timesteps a `steps`-step "leading" sampler visits, ascending: offset, offset + k, ..., k = num_timesteps // steps."""
    for name, value, low in (("num_timesteps", num_timesteps, 1), ("steps", steps, 1), ("offset", offset, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if steps > num_timesteps:
        raise ValueError(f"cannot take {steps} steps from {num_timesteps} training timesteps")
    stride = num_timesteps // steps
    kept = [i * stride + offset for i in range(steps)]
    if kept[-1] >= num_timesteps:
        most = max(n for n in range(1, num_timesteps + 1) if (n - 1) * (num_timesteps // n) + offset < num_timesteps)
        raise ValueError(
            f"{steps} leading steps with offset {offset} reach timestep {kept[-1]}, past the last one ({num_timesteps - 1}); "
            f"accepted: at most {most} steps"
        )
    return kept


__all__ = ["leading_timesteps"]
