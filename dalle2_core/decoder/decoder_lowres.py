"""Low-resolution conditioning for the super-resolution stages of the cascade.

Cascaded diffusion (Ho et al. 2021, "Cascaded Diffusion Models", sec. 3.1 and 4.1): an upsampler
sees the previous stage's image resized to its own resolution, blurred at random in training
(conditioning augmentation) and, as in Imagen (Saharia et al. 2022, sec. 2.4), optionally noised to
a level that is passed to the unet and fixed at sampling time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dalle2_core.diffusion import GaussianDiffusion
from dalle2_core.helpers import exists, normalize_neg_one_to_one, randn, unnormalize_zero_to_one

# the augmentation noise lives on its own linear 1000-step schedule, independent of the unet's
LOWRES_NOISE_TIMESTEPS = 1000


def resize_image_to(image: torch.Tensor, size: int, clamp_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Nearest-neighbour resize to (size, size), the cascade's resampling (as the trained checkpoints)."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(image, size=(size, size), mode="nearest")
    return out.clamp(*clamp_range) if exists(clamp_range) else out


def random_crop_params(image: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of one random (size, size) crop shared by the target and its low-res condition."""
    h, w = image.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"random crop size {size} is larger than the image ({h}x{w})")
    top = int(torch.randint(0, h - size + 1, ()))
    left = int(torch.randint(0, w - size + 1, ()))
    return top, left


def crop(image: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return image[..., top : top + size, left : left + size]


class LowresCond(NamedTuple):
    image: torch.Tensor  # (b, c, h, w) in [0, 1]
    noise_level: torch.Tensor | None  # (b,) long timesteps of the augmentation schedule, or None


class LowresConditioner:
    """Builds the low-resolution conditioning image of one cascade stage (no parameters)."""

    def __init__(
        self,
        *,
        downsample_first: bool = True,
        use_blur: bool = True,
        blur_prob: float = 0.5,
        blur_sigma: float | tuple[float, float] = (0.4, 0.6),
        blur_kernel_size: int | tuple[int, int] = 3,
        use_noise: bool = False,
        noise_sample_level: float = 0.2,
    ):
        if not 0.0 <= noise_sample_level <= 1.0:
            raise ValueError(f"lowres_noise_sample_level must be in [0, 1], got {noise_sample_level}")
        self.downsample_first = downsample_first
        self.use_blur = use_blur
        self.blur_prob = blur_prob
        self.blur_sigma = blur_sigma
        self.blur_kernel_size = blur_kernel_size
        self.use_noise = use_noise
        self.noise_sample_level = noise_sample_level
        self.noise_diffusion = (
            GaussianDiffusion.from_schedule("linear", LOWRES_NOISE_TIMESTEPS) if use_noise else None
        )

    def _blur(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import gaussian_blur  # training only: sampling never imports torchvision

        sigma, kernel = self.blur_sigma, self.blur_kernel_size
        if isinstance(sigma, tuple):  # a range to draw from
            lo, hi = map(float, sigma)
            sigma = lo + (hi - lo) * float(torch.rand(()))
        if isinstance(kernel, tuple):  # an inclusive range of odd sizes
            lo, hi = map(int, kernel)
            kernel = int(torch.randint(lo, hi + 1, ()))
            kernel += 1 - kernel % 2
        return gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])

    def noise_image(
        self, image: torch.Tensor, noise_level: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> LowresCond:
        """Forward-diffuse a [0, 1] image to `noise_level` (random per sample when None)."""
        b = image.shape[0]
        if noise_level is None:
            noise_level = torch.randint(0, LOWRES_NOISE_TIMESTEPS, (b,), device=image.device, generator=generator)
        noise = randn(image.shape, device=image.device, dtype=image.dtype, generator=generator)
        noised = self.noise_diffusion.q_sample(normalize_neg_one_to_one(image), noise_level, noise=noise)
        return LowresCond(unnormalize_zero_to_one(noised), noise_level)

    def sample_noise_level(self, batch: int, device: torch.device) -> torch.Tensor:
        """The fixed augmentation level used at sampling time (Imagen uses 0.2 of the schedule)."""
        level = min(int(self.noise_sample_level * LOWRES_NOISE_TIMESTEPS), LOWRES_NOISE_TIMESTEPS - 1)
        return torch.full((batch,), level, device=device, dtype=torch.long)

    def for_training(self, image: torch.Tensor, *, target_size: int, lowres_size: int) -> LowresCond:
        """Target-resolution image degraded to `lowres_size` (downsample, maybe blur, upsample, maybe noise)."""
        cond = resize_image_to(image, lowres_size, clamp_range=(0.0, 1.0)) if self.downsample_first else image
        if self.use_blur and float(torch.rand(())) < self.blur_prob:
            cond = self._blur(cond)
        cond = resize_image_to(cond, target_size, clamp_range=(0.0, 1.0))
        return self.noise_image(cond) if self.use_noise else LowresCond(cond, None)

    def for_sampling(self, image: torch.Tensor, *, target_size: int, generator=None) -> LowresCond:
        """The previous stage's output upsampled, noised to the fixed sampling level when noise is on."""
        cond = resize_image_to(image, target_size, clamp_range=(0.0, 1.0))
        if not self.use_noise:
            return LowresCond(cond, None)
        return self.noise_image(cond, self.sample_noise_level(cond.shape[0], cond.device), generator=generator)
