"""Kandinsky 2.2's sampling defaults and folder names, written once: diffusers' `KandinskyV22PriorPipeline` and
`KandinskyV22Pipeline` call defaults (their scheduler configs hold no step counts or guidance); the picture size
comes from the decoder's own config (`KandinskyDecoderConfig.default_size`)."""

from __future__ import annotations

from dalle2_core.checkpoint import SamplingSettings

PRIOR_STEPS, DECODER_STEPS = 25, 100
KANDINSKY_DEFAULTS = SamplingSettings(cond_scale=4.0, prior_cond_scale=4.0, prior_samples=1, steps=DECODER_STEPS, prior_steps=PRIOR_STEPS,
                                      sampler="ddpm")
# component folders beside the model index's clip / prior / decoder, loaded on first use
IMAGE_ENCODER, DECODER_INPAINT = "image_encoder", "decoder_inpaint"

__all__ = ["DECODER_INPAINT", "DECODER_STEPS", "IMAGE_ENCODER", "KANDINSKY_DEFAULTS", "PRIOR_STEPS"]
