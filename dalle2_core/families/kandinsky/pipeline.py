"""The Kandinsky 2.2 family: OpenCLIP ViT-bigG/14's text tower, a standardised prior at width 1280, and a
`KandinskyDecoder` (a latent U-Net conditioned on the image embedding alone, and MoVQ).

The prior's guidance is unconditional on the empty prompt's encoding, or on the negative prompt's. The decoder's
unconditional image embedding is the checkpoint's zero-image embedding, or the negative prompt's prior sample:
as diffusers does, the negative prompts then run through the prior as extra rows guided by themselves, i.e. an
unguided sample of each (`sample_prior_with_negatives`). Its embeddings are CLIP's raw projections
(`unit_embeddings` False). The vision tower (`image_encoder/`, 1.8 B parameters stored in float16) is loaded only
when pictures are embedded (variations, mix, interpolate), the inpainting U-Net (`decoder_inpaint/`) on the first
inpainting run; a model folder without one inpaints by RePaint on the decoder's U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dalle2_core.checkpoint import ModelLoadError, SamplingSettings
from dalle2_core.clip.adapter import ClipAdapter
from dalle2_core.conditioning import Condition, TextCondition
from dalle2_core.families.kandinsky.decoder import STAGE, KandinskyDecoder
from dalle2_core.families.kandinsky.defaults import DECODER_INPAINT, IMAGE_ENCODER, KANDINSKY_DEFAULTS
from dalle2_core.helpers import default, exists, randn
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


class KandinskyPipeline(ModelPrompts, Pipeline):
    """Text -> ViT-bigG text embedding and states -> prior -> image embedding -> latent U-Net -> MoVQ -> picture."""

    family = "kandinsky"
    unit_embeddings = False  # the prior and the decoder read CLIP's raw projections

    def __init__(self, *, clip: ClipAdapter, prior: StandardizedPrior, decoder: KandinskyDecoder, defaults: SamplingSettings | None = None):
        super().__init__()
        if not isinstance(decoder, KandinskyDecoder):
            raise TypeError(f"decoder must be a KandinskyDecoder, got {type(decoder).__name__}")
        if not isinstance(prior, StandardizedPrior):
            raise TypeError(f"prior must be a StandardizedPrior, got {type(prior).__name__}")
        self.clip, self.prior, self.decoder = clip, prior, decoder
        self.defaults = default(defaults, KANDINSKY_DEFAULTS)
        self._empty: dict[tuple, TextCondition] = {}  # the empty prompt's encoding, per (device, dtype)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return (STAGE,)

    @property
    def has_prior(self) -> bool:
        return True

    @property
    def image_size(self) -> int:
        return self.decoder.config.default_size

    def sizes(self) -> str:
        return self.decoder.config.sizes()

    def makes(self, width: int, height: int) -> bool:
        try:
            self.decoder.config.check_size(height, width)
        except ValueError:
            return False
        return True

    @property
    def repaints(self) -> bool:
        return DECODER_INPAINT not in self._modules and not (exists(self.folder) and (self.folder / DECODER_INPAINT).is_dir())

    def prior_runs(self, *, text: bool, negative: bool) -> int:
        return int(text or negative)  # negative prompts are extra rows of the prompts' prior run

    def stage_defaults(self) -> StageDefaults:
        prior, decoder = self.prior.config.diffusion, self.decoder.config.diffusion
        return StageDefaults(prior=(default(prior.sample_steps, prior.timesteps), prior.timesteps),
                             decoder=((default(decoder.sample_steps, decoder.timesteps), decoder.timesteps),))

    # ---- the stages ---------------------------------------------------------------------------------

    def sample_prior(self, text: TextCondition, settings: SamplingSettings, *, generator: Generator = None,
                     on_step: OnStep | None = None, negative: TextCondition | None = None) -> torch.Tensor:
        return self._prior(text, default(negative, self._empty_prompt), settings.prior_cond_scale, settings, generator, on_step)

    def sample_prior_with_negatives(self, text: TextCondition, negative: TextCondition | None, settings: SamplingSettings, *,
                                    generator: Generator = None, on_step: OnStep | None = None) -> tuple[torch.Tensor, Condition | None]:
        """With negative prompts, one prior run as KandinskyV22PriorPipeline makes it: the prompts' rows guided away from
        the negative prompts, and the negative prompts' rows guided by themselves (an unguided sample of each), which
        become the decoder's unconditional image embeddings. Image i's rows of both come from its own generator."""
        if negative is None:
            return self.sample_prior(text, settings, generator=generator, on_step=on_step), None
        b = text.batch
        rows, uncond = TextCondition.cat([text, negative]), TextCondition.cat([negative, negative])
        paired = _Paired(generator) if isinstance(generator, (list, tuple)) else generator
        both = self._prior(rows, uncond, settings.prior_cond_scale, settings, paired, on_step)
        return both[:b], Condition(both[b:], negative)

    def negative_condition(self, negative: TextCondition, settings: SamplingSettings, *, generator: Generator = None,
                           on_step: OnStep | None = None) -> Condition:
        """The negative prompts' unguided prior samples (what diffusers' prior pipeline gives as negative_image_embeds)."""
        return Condition(self._prior(negative, negative, 1.0, settings, generator, on_step), negative)

    def _prior(self, text: TextCondition, uncond: TextCondition, cond_scale: float, settings: SamplingSettings, generator,
               on_step) -> torch.Tensor:
        with self.on_device(self.prior):
            step = None if on_step is None else (lambda i, total, x: on_step(PRIOR_STAGE, i, total, x))
            candidates = self.prior.sample_embeds(
                text.text_embed, text.text_encodings, text.text_mask, num_samples_per_batch=settings.prior_samples, cond_scale=cond_scale,
                steps=prior_steps(self.prior, settings), sampler=settings.sampler, generator=generator, uncond=uncond, on_step=step,
            )
            check_finite(candidates, PRIOR_STAGE, cond_scale)
            return rerank_by_similarity(candidates, text.text_embed)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures' raw image embeddings from the vision tower (`image_encoder/`, loaded on first use)."""
        tower = self.on_demand(IMAGE_ENCODER)
        if tower is None:
            raise ModelLoadError(f"this Kandinsky model folder has no {IMAGE_ENCODER}/ (the CLIP vision tower): it cannot embed pictures")
        with self.on_device(tower):
            param = next(tower.parameters())
            return tower.embed_image(images.to(device=param.device, dtype=param.dtype)).image_embed.to(self._dtype())

    def _dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    def decode(self, image_embed: torch.Tensor | None, text: TextCondition | None, settings: SamplingSettings, *,
               batch_size: int | None = None, generator: Generator = None, on_step: OnStep | None = None,
               edit: ImageEdit | None = None, negative: Condition | None = None) -> torch.Tensor:
        """Pictures at `settings.size` from image embeddings; the text is not read (the decoder sees none)."""
        inpaint = self.on_demand(DECODER_INPAINT) if exists(edit) and exists(edit.mask) else None
        width, height = self.check_size(settings.size)
        # an inpainting run needs the inpainting U-Net and MoVQ on the device, not the decoder's own U-Net
        first, second = (self.decoder.movq, inpaint) if exists(inpaint) else (self.decoder, None)
        with self.on_device(first), self.on_device(second):
            device = self.device
            image_embed = image_embed.to(device=device, dtype=self._dtype())
            negative_embed = negative.image_embed.to(image_embed) if exists(negative) else None
            return self.decoder.sample(image_embed, negative_image_embed=negative_embed, size=(height, width),
                                       cond_scale=settings.cond_scale[0], steps=settings.steps[0], sampler=settings.sampler,
                                       spacing=settings.spacing, generator=generator, on_step=self._stage_hook(on_step),
                                       inpaint_unet=inpaint, **edit_options(edit, image_embed.shape[0]))


class _Paired:
    """One generator per image for a prior run whose rows are [prompts; negative prompts]: generator i draws the rows of
    prompt i and of negative prompt i, so an image's draws do not depend on its batch."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def randn(self, shape, device=None, dtype=None) -> torch.Tensor:
        n = len(self.generators)
        per = shape[0] // (2 * n)  # rows of one prompt (its prior candidates)
        if per * 2 * n != shape[0]:
            raise ValueError(f"{n} generators cannot split {shape[0]} rows of prompts and negative prompts")
        draws = torch.stack([randn((2, per, *shape[1:]), generator=g, device=device, dtype=dtype) for g in self.generators])
        return draws.transpose(0, 1).reshape(shape)  # (n, 2, per, ...) -> (2, n, per, ...): prompts' rows, then negatives'


__all__ = ["KandinskyPipeline"]
