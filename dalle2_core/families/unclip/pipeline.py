"""The unCLIP family (Ramesh et al. 2022) as built here: a CLIP adapter, a `DiffusionPrior`, a cascaded `Decoder`.

LAION's converted weights and every model `dream train` writes are of this family. Guidance uses the
learned null conditions of the prior and the decoder (trained through condition dropout).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dalle2_core.checkpoint import SamplingSettings
from dalle2_core.clip import CLIP, ClipAdapter, XClipAdapter, as_clip_adapter, resize_center_crop
from dalle2_core.conditioning import Condition, TextCondition
from dalle2_core.decoder.decoder import Decoder
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
from dalle2_core.prior.prior import DiffusionPrior, rerank_by_similarity


def _same_clip(a: ClipAdapter | None, b: ClipAdapter | None) -> bool:
    """Whether two adapters run the same CLIP (the prior's and decoder's wrappers of one project CLIP do)."""
    if a is None or b is None or a is b:
        return True
    return isinstance(a, XClipAdapter) and isinstance(b, XClipAdapter) and a.clip is b.clip


class UnclipPipeline(Pipeline):
    """Text -> CLIP text embedding -> prior -> CLIP image embedding -> decoder cascade -> images."""

    family = "unclip"

    def __init__(self, *, decoder: Decoder, prior: DiffusionPrior | None = None, clip: CLIP | ClipAdapter | None = None,
                 defaults: SamplingSettings | None = None):
        super().__init__()
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a Decoder, got {type(decoder).__name__}")
        if exists(prior) and not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a DiffusionPrior, got {type(prior).__name__}")
        self.prior = prior
        self.decoder = decoder
        # `clip` serves only when neither network holds one (the CLIP of a loaded folder is already inside them)
        inside = prior.clip if exists(prior) and exists(prior.clip) else decoder.clip
        self.extra_clip = as_clip_adapter(clip).eval().requires_grad_(False) if exists(clip) and not exists(inside) else None
        self.defaults = default(defaults, SamplingSettings())

    @classmethod
    def from_folder(cls, folder, *, device=None, dtype=None) -> UnclipPipeline:
        """The model folder's CLIP (stored once), prior and decoder (`checkpoint.load_model`)."""
        from dalle2_core.checkpoint import ModelLoadError, load_model

        model = load_model(folder, device=device, dtype=dtype)
        if model.decoder is None:
            raise ModelLoadError(f"{folder} has no decoder, so it cannot make images")
        pipeline = cls(clip=model.clip, prior=model.prior, decoder=model.decoder, defaults=model.defaults)
        pipeline.folder, pipeline.fast = Path(folder), model.fast
        return pipeline.eval()

    @property
    def text_encoder(self) -> ClipAdapter | None:
        """The CLIP that encodes prompts and pictures: the prior's, else the decoder's, else the one given."""
        if exists(self.prior) and exists(self.prior.clip):
            return self.prior.clip
        return default(self.decoder.clip, self.extra_clip)

    # ---- the family's steps ----------------------------------------------------------------------

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(f"unet {i + 1}" for i in range(self.decoder.num_unets))

    @property
    def has_prior(self) -> bool:
        return exists(self.prior)

    @property
    def image_size(self) -> int:
        return self.decoder.image_size

    @property
    def unconditional(self) -> bool:
        return self.decoder.unconditional

    def stage_defaults(self) -> StageDefaults:
        cfg = self.decoder.config
        t = cfg.diffusion.timesteps
        decoder = tuple((default(s, t), t) for s in cfg.per_unet(cfg.diffusion.sample_timesteps))
        prior = None
        if exists(self.prior):
            p = self.prior.config
            prior = (p.sample_timesteps or p.timesteps, p.timesteps)
        return StageDefaults(prior=prior, decoder=decoder)

    def _require_clip(self, what: str) -> ClipAdapter:
        if not exists(self.text_encoder):
            raise ValueError(f"{what} needs a CLIP; this model has none (pass embeddings instead)")
        return self.text_encoder

    def encode_text(self, text: Sequence[str] | torch.Tensor) -> TextCondition:
        """The CLIP text embedding, encodings and mask of a batch of prompts or token ids (one forward)."""
        with self.on_device(self.text_encoder):
            clip = self._require_clip("text")
            if not isinstance(text, torch.Tensor):
                text = list(text)
            with torch.no_grad():
                return clip.embed_text(text)._replace(text=text)

    def sample_prior(self, text: TextCondition, settings: SamplingSettings, *, generator: Generator = None,
                     on_step: OnStep | None = None, negative: TextCondition | None = None) -> torch.Tensor:
        """Prior candidates per prompt; the one closest to the text embedding is kept (DALL-E 2 Sec. 2.2)."""
        with self.on_device(self.prior):
            prior = self.prior
            if not exists(prior):
                raise ValueError("this model has no prior, so it cannot embed text")
            cond = dict(text_embed=text.text_embed)
            if prior.config.condition_on_text_encodings:
                cond.update(text_encodings=text.text_encodings, text_mask=text.text_mask)
            step = None if on_step is None else (lambda i, total, x: on_step(PRIOR_STAGE, i, total, x))
            uncond = negative
            candidates = prior.sample_embeds(
                **cond, num_samples_per_batch=settings.prior_samples, cond_scale=settings.prior_cond_scale,
                steps=prior_steps(prior, settings), sampler=settings.sampler, generator=generator, on_step=step, uncond=uncond,
            )
            check_finite(candidates, PRIOR_STAGE, settings.prior_cond_scale)
            return rerank_by_similarity(candidates, text.text_embed)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        with self.on_device(self.text_encoder):
            clip = self._require_clip("embedding images")
            return clip.embed_image(images.to(device=clip.device, dtype=next(clip.parameters()).dtype)).image_embed

    def decode(self, image_embed: torch.Tensor | None, text: TextCondition | None, settings: SamplingSettings, *,
               batch_size: int | None = None, generator: Generator = None, on_step: OnStep | None = None,
               edit: ImageEdit | None = None, negative: Condition | None = None) -> torch.Tensor:
        with self.on_device(self.decoder):
            decoder = self.decoder
            cond, uncond = {}, None
            if not decoder.unconditional:
                cond = self._decoder_cond(image_embed, text)
                if exists(negative):
                    uncond = self._decoder_uncond(negative)
            b = default(batch_size, image_embed.shape[0] if exists(image_embed) else 1)
            return decoder.sample(**cond, batch_size=b, cond_scale=settings.cond_scale, sampler=settings.sampler,
                                  steps=settings.steps, spacing=settings.spacing, generator=generator, on_step=self._stage_hook(on_step),
                                  uncond=uncond, **edit_options(edit, b))

    def _decoder_cond(self, image_embed: torch.Tensor, text: TextCondition | None) -> dict:
        cond = dict(image_embed=image_embed)
        if self.decoder.condition_on_text_encodings:
            cond.update(self._decoder_text(text, image_embed.shape[0]))
        return cond

    def _decoder_uncond(self, negative: Condition) -> Condition:
        """A negative prompt as the decoder's unconditional branch: its prior embedding and its text."""
        cond = self._decoder_cond(negative.image_embed, negative.text)
        text = None
        if "text_encodings" in cond:
            text = TextCondition(negative.text.text_embed, cond["text_encodings"], cond.get("text_mask"))
        return Condition(cond["image_embed"], text)

    def upscale(self, images: torch.Tensor, settings: SamplingSettings, *, prompts: Sequence[str] | None = None,
                generator: Generator = None, on_step: OnStep | None = None) -> torch.Tensor:
        """The stages after the base unet on [0, 1] images, resized (antialiased, centre crop) to their input size."""
        with self.on_device(self.decoder):
            decoder = self.decoder
            if decoder.num_unets < 2:
                raise ValueError("this model has one decoder stage and no super-resolution stage to run")
            low = resize_center_crop(images, decoder.image_sizes[0], "bicubic").clamp(0.0, 1.0)
            cond = {}
            if any(u.cond_on_text_encodings for u in decoder.unets[1:]):
                text = self.encode_text(prompts) if exists(prompts) else None
                cond = self._decoder_text(text, low.shape[0])
            return decoder.sample(**cond, batch_size=low.shape[0], cond_scale=settings.cond_scale, sampler=settings.sampler,
                                  steps=settings.steps, spacing=settings.spacing, start_at_unet_number=2, start_image_or_video=low,
                                  generator=generator, on_step=self._stage_hook(on_step))

    def _decoder_text(self, text: TextCondition | None, batch: int) -> dict:
        """Text encodings for the decoder: the shared encoding, its own CLIP's, or its learned null text."""
        if text is None:
            return self._null_encodings(batch)
        clip = self.decoder.clip
        if exists(clip) and not _same_clip(clip, self.text_encoder):  # a decoder trained with another CLIP
            with torch.no_grad():
                own = clip.embed_text(text.text)
            return dict(text_encodings=own.text_encodings, text_mask=own.text_mask)
        return dict(text_encodings=text.text_encodings, text_mask=text.text_mask)

    def _null_encodings(self, batch: int) -> dict:
        """All-padding text: every position takes the unet's learned null text token (text dropped)."""
        unet = next(u for u in self.decoder.unets if u.cond_on_text_encodings)
        width = unet.config.conditioning.text_embed_dim
        param = next(self.decoder.parameters())
        encodings = torch.zeros(batch, 1, width, device=param.device, dtype=param.dtype)
        return dict(text_encodings=encodings, text_mask=torch.zeros(batch, 1, dtype=torch.bool, device=param.device))

    def _null_text(self, like: TextCondition) -> TextCondition:
        n = like.text_encodings.shape[1] if exists(like.text_encodings) else 1
        zeros = lambda t: torch.zeros_like(t[:1]) if exists(t) else None  # noqa: E731
        encodings = zeros(like.text_encodings)
        mask = torch.zeros(1, n, dtype=torch.bool, device=like.text_embed.device) if exists(like.text_mask) else None
        return TextCondition(zeros(like.text_embed), encodings, mask, [""])


__all__ = ["UnclipPipeline"]
