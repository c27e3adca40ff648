"""Trainable CLIP (Radford et al. 2021) with x-clip's options: FILIP, DCL, CLOOB projections, SSL, MLM."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..helpers import exists, l2norm
from .adapter import EmbeddedImage, EmbeddedText
from .config import CLIPConfig
from .encoders import TextTransformer, VisionTransformer
from .losses import filip_image_to_text, filip_text_to_image, symmetric_contrastive_loss, token_similarities
from .mlm import MaskedLanguageModel
from .ssl import visual_ssl_head


class CLIP(nn.Module):
    """Contrastive text-image model; `clip(text, images, return_loss=True)` gives the training loss.

    Images are float (b, c, h, w) in [0, 1] at `visual_image_size`; the visual tower normalises
    them with `image_mean` / `image_std`. Text is (b, n <= text_seq_len) token ids, 0 = padding.

    With `use_all_token_embeds` (FILIP) the token-wise loss is averaged with the CLS-level loss, so
    the pooled embeddings that DALL-E 2 consumes (`embed_text` / `embed_image`) are trained too.
    """

    def __init__(self, config: CLIPConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = CLIPConfig.build(config, owner="CLIP", **kwargs)
        cfg, losses = self.config, self.config.losses

        self.text_transformer = TextTransformer(cfg.text, extra_tokens=1 if losses.use_mlm else 0)
        self.visual_transformer = VisionTransformer(cfg.visual)
        self.to_text_latent = nn.Linear(cfg.text.dim_text, cfg.dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(cfg.visual.dim_image, cfg.dim_latent, bias=False)
        if losses.extra_latent_projection:
            # CLOOB: image->text similarities get their own projections, initialised like the main ones
            self.to_text_latent_extra = copy.deepcopy(self.to_text_latent)
            self.to_visual_latent_extra = copy.deepcopy(self.to_visual_latent)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / losses.init_temperature)))

        self.mlm = (
            MaskedLanguageModel(cfg.text.dim_text, cfg.text.num_text_tokens, losses.mlm_mask_prob)
            if losses.use_mlm
            else None
        )
        self.visual_ssl = (
            visual_ssl_head(
                losses.visual_ssl_type, cfg.visual.dim_image, losses.ssl_projection_dim, losses.simclr_temperature
            )
            if losses.use_visual_ssl
            else None
        )

    @classmethod
    def from_config(cls, config: CLIPConfig | dict) -> CLIP:
        return cls(config)

    # sizes, as the adapters and callers read them

    @property
    def dim_latent(self) -> int:
        return self.config.dim_latent

    @property
    def dim_text(self) -> int:
        return self.config.text.dim_text

    @property
    def dim_image(self) -> int:
        return self.config.visual.dim_image

    @property
    def image_size(self) -> int:
        return self.config.visual.visual_image_size

    @property
    def image_channels(self) -> int:
        return self.config.visual.channels

    @property
    def text_seq_len(self) -> int:
        return self.config.text.text_seq_len

    @property
    def num_text_tokens(self) -> int:
        return self.config.text.num_text_tokens

    # encoders

    def text_mask(self, text: torch.Tensor) -> torch.Tensor:
        return text != self.config.text.text_pad_id

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, n) ids -> ((b, 1 + n, dim_text) states with CLS first, (b, n) mask)."""
        self.text_transformer.check_tokens(text)
        mask = self.text_mask(text)
        return self.text_transformer(text, mask), mask

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) in [0, 1] -> (b, 1 + patches, dim_image) states with CLS first."""
        self.visual_transformer.check_images(images)
        return self.visual_transformer(images)

    def embed_text(self, text: torch.Tensor) -> EmbeddedText:
        states, mask = self.encode_text(text)
        tokens = states[:, 1:].masked_fill(~mask[..., None], 0.0)  # (b, n, dim_text), padding zeroed
        return EmbeddedText(l2norm(self.to_text_latent(states[:, 0])), tokens, mask)

    def embed_image(self, images: torch.Tensor) -> EmbeddedImage:
        states = self.encode_image(images)
        return EmbeddedImage(l2norm(self.to_visual_latent(states[:, 0])), states[:, 1:])

    # similarities and losses

    def temperature_scale(self) -> torch.Tensor:
        """exp(learned log-scale), capped as in CLIP so the logits cannot blow up."""
        return self.logit_scale.exp().clamp(max=self.config.losses.max_logit_scale)

    def _latents(self, text_states: torch.Tensor, image_states: torch.Tensor, extra: bool):
        to_text = self.to_text_latent_extra if extra else self.to_text_latent
        to_image = self.to_visual_latent_extra if extra else self.to_visual_latent
        return l2norm(to_text(text_states)), l2norm(to_image(image_states))

    def similarity_logits(
        self, text_states: torch.Tensor, text_mask: torch.Tensor, image_states: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(text->image (bt, bi), image->text (bi, bt)) logit pairs: the CLS level, then FILIP if on."""
        losses, scale = self.config.losses, self.temperature_scale()
        extra = losses.extra_latent_projection

        t, i = self._latents(text_states[:, 0], image_states[:, 0], extra=False)
        t2i = scale * t @ i.t()
        if extra:
            t_x, i_x = self._latents(text_states[:, 0], image_states[:, 0], extra=True)
            i2t = scale * i_x @ t_x.t()
        else:
            i2t = t2i.t()
        pairs = [(t2i, i2t)]

        if losses.use_all_token_embeds:
            t_tok, i_tok = self._latents(text_states[:, 1:], image_states[:, 1:], extra=False)
            sim = scale * token_similarities(t_tok, i_tok)  # (bt, bi, n, patches)
            if extra:
                t_tok, i_tok = self._latents(text_states[:, 1:], image_states[:, 1:], extra=True)
                sim_extra = scale * token_similarities(t_tok, i_tok)
            else:
                sim_extra = sim
            pairs.append((filip_text_to_image(sim, text_mask), filip_image_to_text(sim_extra, text_mask)))
        return pairs

    def forward(self, text: torch.Tensor, images: torch.Tensor, return_loss: bool = False) -> torch.Tensor:
        """Scalar training loss, or (b_text, b_image) text->image similarity logits when not `return_loss`.

        The logits are FILIP's token-wise scores when `use_all_token_embeds`, else CLS cosines,
        both times the learned temperature scale.
        """
        text_states, text_mask = self.encode_text(text)
        image_states = self.encode_image(images)
        pairs = self.similarity_logits(text_states, text_mask, image_states)
        if not return_loss:
            return pairs[-1][0]

        if text.shape[0] != images.shape[0]:
            raise ValueError(f"the loss needs paired data: got {text.shape[0]} texts and {images.shape[0]} images")
        losses = self.config.losses
        dcl = losses.decoupled_contrastive_learning
        cl_loss = torch.stack([symmetric_contrastive_loss(t2i, i2t, dcl) for t2i, i2t in pairs]).mean()
        # x-clip's weighting: the SSL terms take their share out of the contrastive loss's weight
        loss = cl_loss * (1 - losses.text_ssl_weight - losses.image_ssl_weight)
        if exists(self.mlm):
            loss = loss + losses.text_ssl_weight * self.mlm(text, text_mask, self.text_transformer)
        if exists(self.visual_ssl):
            loss = loss + losses.image_ssl_weight * self.visual_ssl(images, self._visual_cls)
        return loss

    def _visual_cls(self, images: torch.Tensor) -> torch.Tensor:
        """The representation the image SSL heads see: the ViT's CLS state."""
        return self.visual_transformer(images)[:, 0]


__all__ = ["CLIP"]
