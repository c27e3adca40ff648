"""The Karlo family (Kakao Brain's Karlo v1-alpha, an unCLIP replication): OpenAI CLIP ViT-L/14 towers with raw
(unnormalised) embeddings, a `StandardizedPrior`, and a `KarloCascade` (64 px ADM decoder -> 256 px super-resolution).

Karlo learns no null text condition: the unconditional branch of guidance is CLIP's encoding of the empty
prompt (a negative prompt takes its place), and the decoder's text-free condition is that same encoding.
The empty prompt is encoded in the same forward as the first batch of prompts and kept per device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dalle2_core.checkpoint import SamplingSettings
from dalle2_core.clip.adapter import ClipAdapter
from dalle2_core.conditioning import Condition, TextCondition
from dalle2_core.families.karlo.cascade import KarloCascade
from dalle2_core.families.karlo.defaults import KARLO_DEFAULTS
from dalle2_core.helpers import default, exists
from dalle2_core.pipeline.base import (
    PRIOR_STAGE,
    Generator,
    ImageEdit,
    OnStep,
    Pipeline,
    StageDefaults,
    check_finite,
    edit_options,
    prior_steps,
)
from dalle2_core.pipeline.prompts import ModelPrompts
from dalle2_core.prior.prior import rerank_by_similarity
from dalle2_core.prior.standardized_prior import StandardizedPrior

STAGE_NAMES = ("decoder", "super-res")


class KarloPipeline(ModelPrompts, Pipeline):
    """Text -> CLIP ViT-L/14 text embedding and states -> Karlo prior -> image embedding -> 64 px decoder -> 256 px."""

    family = "karlo"
    unit_embeddings = False  # Karlo's prior and decoder read CLIP's raw projections

    def __init__(self, *, clip: ClipAdapter, prior: StandardizedPrior | None, decoder: KarloCascade,
                 defaults: SamplingSettings | None = None):
        super().__init__()
        if not isinstance(decoder, KarloCascade):
            raise TypeError(f"decoder must be a KarloCascade, got {type(decoder).__name__}")
        if exists(prior) and not isinstance(prior, StandardizedPrior):
            raise TypeError(f"prior must be a StandardizedPrior, got {type(prior).__name__}")
        self.clip, self.prior, self.decoder = clip, prior, decoder
        self.defaults = default(defaults, KARLO_DEFAULTS)
        self._empty: dict[tuple, TextCondition] = {}  # the empty prompt's encoding, per (device, dtype)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return STAGE_NAMES

    @property
    def has_prior(self) -> bool:
        return exists(self.prior)

    @property
    def image_size(self) -> int:
        return self.decoder.image_size

    def stage_defaults(self) -> StageDefaults:
        c = self.decoder.config
        stages = (c.decoder_diffusion, c.super_res_diffusion)
        decoder = tuple((default(d.sample_steps, d.timesteps), d.timesteps) for d in stages)
        prior = None
        if exists(self.prior):
            d = self.prior.config.diffusion
            prior = (default(d.sample_steps, d.timesteps), d.timesteps)
        return StageDefaults(prior=prior, decoder=decoder)

    # ---- the stages ---------------------------------------------------------------------------------

    def sample_prior(self, text: TextCondition, settings: SamplingSettings, *, generator: Generator = None,
                     on_step: OnStep | None = None, negative: TextCondition | None = None) -> torch.Tensor:
        with self.on_device(self.prior):
            if not exists(self.prior):
                raise ValueError("this model has no prior, so it cannot embed text")
            uncond = negative if exists(negative) else self._empty_prompt()
            step = None if on_step is None else (lambda i, total, x: on_step(PRIOR_STAGE, i, total, x))
            candidates = self.prior.sample_embeds(
                text.text_embed, text.text_encodings, text.text_mask, num_samples_per_batch=settings.prior_samples,
                cond_scale=settings.prior_cond_scale, steps=prior_steps(self.prior, settings), sampler=settings.sampler,
                generator=generator, uncond=uncond, on_step=step,
            )
            check_finite(candidates, PRIOR_STAGE, settings.prior_cond_scale)
            return rerank_by_similarity(candidates, text.text_embed)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        with self.on_device(self.clip):
            param = next(self.clip.parameters())
            return self.clip.embed_image(images.to(device=param.device, dtype=param.dtype)).image_embed

    def decode(self, image_embed: torch.Tensor | None, text: TextCondition | None, settings: SamplingSettings, *,
               batch_size: int | None = None, generator: Generator = None, on_step: OnStep | None = None,
               edit: ImageEdit | None = None, negative: Condition | None = None) -> torch.Tensor:
        with self.on_device(self.decoder):
            b = image_embed.shape[0]
            text = (text if exists(text) else self._empty_prompt()).expand(b)  # the empty prompt is one row
            uncond = negative if exists(negative) else Condition(None, self._empty_prompt())
            return self.decoder.sample(image_embed, text.text_encodings, text.text_mask, text_embed=text.text_embed,
                                       cond_scale=settings.cond_scale, steps=settings.steps, sampler=settings.sampler,
                                       spacing=settings.spacing, generator=generator, uncond=uncond,
                                       on_step=self._stage_hook(on_step), **edit_options(edit, b))

    def upscale(self, images: torch.Tensor, settings: SamplingSettings, *, prompts: Sequence[str] | None = None,
                generator: Generator = None, on_step: OnStep | None = None) -> torch.Tensor:
        """The super-resolution stage on [0, 1] images, resized (antialiased, centre crop) to the decoder's 64 px."""
        with self.on_device(self.decoder):
            from dalle2_core.clip import resize_center_crop

            small = resize_center_crop(images, self.decoder.config.decoder.sample_size, "bicubic").clamp(0.0, 1.0)
            return self.decoder.upscale(small, steps=settings.steps[1], sampler=settings.sampler, generator=generator,
                                        spacing=settings.spacing, on_step=self._stage_hook(on_step))

__all__ = ["KarloPipeline"]
