"""unCLIP end to end (Ramesh et al. 2022): the DALLE2-pytorch README's `DALLE2` wrapper, and slerp for interpolation (Sec. 3.2).

`DALLE2` is the unCLIP pipeline (`dalle2_core.pipeline.UnclipPipeline`) with the DALLE2-pytorch README's constructor and
call; variations and interpolation are the pipeline's `variations` / `interpolate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dalle2_core.checkpoint import SamplingSettings
from dalle2_core.decoder.decoder import Decoder
from dalle2_core.families.unclip.pipeline import UnclipPipeline
from dalle2_core.helpers import eval_mode
from dalle2_core.interpolation import mix_embeddings, slerp
from dalle2_core.prior.prior import DiffusionPrior


def to_pil_images(images: torch.Tensor) -> list:
    """(b, c, h, w) images in [0, 1] as PIL images."""
    from torchvision.transforms.functional import to_pil_image

    return [to_pil_image(img) for img in images.detach().float().clamp(0.0, 1.0).cpu()]


class DALLE2(UnclipPipeline):
    """Text to image with a diffusion prior and a cascaded decoder (unCLIP, Ramesh et al. 2022, Fig. 2)."""

    def __init__(self, *, prior: DiffusionPrior, decoder: Decoder, prior_num_samples: int = 2):
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a DiffusionPrior, got {type(prior).__name__}")
        if prior_num_samples < 1:
            raise ValueError(f"prior_num_samples must be >= 1, got {prior_num_samples}")
        super().__init__(prior=prior, decoder=decoder, defaults=SamplingSettings(prior_samples=prior_num_samples))
        self.prior_num_samples = prior_num_samples

    @property
    def clip(self):
        """The CLIP used for prompts: the prior's, else the decoder's."""
        return self.text_encoder

    @torch.no_grad()
    def forward(
        self,
        text: str | Sequence[str] | torch.Tensor,
        cond_scale: float | tuple[float, ...] = 1.0,
        prior_cond_scale: float = 1.0,
        return_pil_images: bool = False,
        *,
        sampler: str = "ddpm",
        steps: int | tuple | None = None,
        prior_steps: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        on_step=None,
    ):
        """Images (b, c, H, W) in [0, 1] (or PIL images) for prompts or token ids (b, n).

        `on_step(stage, i, total, x)` runs after every sampling step ("prior", "unet 1", ...).
        """
        if not (_is_strings(text) or (isinstance(text, torch.Tensor) and text.ndim == 2)):
            raise ValueError(f"text must be a prompt, a list of prompts or token ids (b, n); got {type(text).__name__}")
        settings = self.resolve(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, sampler=sampler, steps=steps,
                                prior_steps=prior_steps)
        if isinstance(text, torch.Tensor):
            text = text.to(self.text_encoder.device)
        with eval_mode(self):
            images = self.generate(text, settings, generator=generator, on_step=on_step)
        return to_pil_images(images) if return_pil_images else images


def _is_strings(text) -> bool:
    return isinstance(text, str) or (
        isinstance(text, (list, tuple)) and len(text) > 0 and all(isinstance(t, str) for t in text)
    )


__all__ = ["DALLE2", "mix_embeddings", "slerp", "to_pil_images"]
