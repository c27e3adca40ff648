"""Typed configuration of the trainable CLIP: text tower, visual tower, training objectives."""

from __future__ import annotations

from dataclasses import field

from ..config import Config, config_dataclass
from .tokenizer import CLIP_VOCAB_SIZE

# OpenAI CLIP's pixel statistics; images reach the visual tower as (x - mean) / std
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISUAL_SSL_TYPES = ("simclr", "simsiam")


def _check_heads(owner: str, dim: int, heads: int) -> None:
    if dim <= 0 or heads <= 0 or dim % heads:
        raise ValueError(f"{owner}: width {dim} must be a positive multiple of heads {heads}")


@config_dataclass
class TextEncoderConfig(Config):
    dim_text: int = 512
    num_text_tokens: int = CLIP_VOCAB_SIZE
    text_enc_depth: int = 6
    text_seq_len: int = 256
    text_heads: int = 8
    text_ff_mult: int = 4
    text_pad_id: int = 0  # open_clip's tokenizer pads with 0

    def __post_init__(self):
        _check_heads("text encoder", self.dim_text, self.text_heads)
        if self.num_text_tokens <= 0 or self.text_seq_len <= 0 or self.text_enc_depth <= 0:
            raise ValueError(
                f"num_text_tokens, text_seq_len and text_enc_depth must be positive, got "
                f"{self.num_text_tokens}, {self.text_seq_len}, {self.text_enc_depth}"
            )


@config_dataclass
class VisualEncoderConfig(Config):
    dim_image: int = 512
    visual_enc_depth: int = 6
    visual_image_size: int = 256
    visual_patch_size: int = 32
    visual_heads: int = 8
    visual_ff_mult: int = 4
    channels: int = 3
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD

    def __post_init__(self):
        _check_heads("visual encoder", self.dim_image, self.visual_heads)
        if self.visual_patch_size <= 0 or self.visual_image_size % self.visual_patch_size:
            raise ValueError(
                f"visual_image_size {self.visual_image_size} must be divisible by visual_patch_size "
                f"{self.visual_patch_size}"
            )
        if len(self.image_mean) != self.channels or len(self.image_std) != self.channels:
            raise ValueError(
                f"image_mean {self.image_mean} and image_std {self.image_std} need one value per channel "
                f"({self.channels})"
            )

    @property
    def num_patches(self) -> int:
        return (self.visual_image_size // self.visual_patch_size) ** 2


@config_dataclass
class CLIPLossConfig(Config):
    use_all_token_embeds: bool = False  # FILIP fine-grained token-wise similarity
    decoupled_contrastive_learning: bool = False  # DCL: positives out of the InfoNCE denominator
    extra_latent_projection: bool = False  # CLOOB: separate image->text projections
    use_visual_ssl: bool = False
    visual_ssl_type: str = "simsiam"
    use_mlm: bool = False
    text_ssl_loss_weight: float = 0.05
    image_ssl_loss_weight: float = 0.05
    simclr_temperature: float = 0.1
    ssl_projection_dim: int = 128
    mlm_mask_prob: float = 0.15
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self):
        if self.visual_ssl_type not in VISUAL_SSL_TYPES:
            raise ValueError(f"visual_ssl_type {self.visual_ssl_type!r} is not one of {VISUAL_SSL_TYPES}")
        weights = self.text_ssl_weight + self.image_ssl_weight
        if self.text_ssl_loss_weight < 0 or self.image_ssl_loss_weight < 0 or weights >= 1:
            raise ValueError(
                f"text_ssl_loss_weight {self.text_ssl_loss_weight} and image_ssl_loss_weight "
                f"{self.image_ssl_loss_weight} must be >= 0 and (for the objectives turned on) sum below 1"
            )
        if not 0 < self.mlm_mask_prob < 1:
            raise ValueError(f"mlm_mask_prob must be in (0, 1), got {self.mlm_mask_prob}")
        if self.init_temperature <= 0 or self.simclr_temperature <= 0:
            raise ValueError(
                f"temperatures must be positive, got init_temperature {self.init_temperature}, "
                f"simclr_temperature {self.simclr_temperature}"
            )

    @property
    def text_ssl_weight(self) -> float:
        """Weight of the MLM loss actually applied (0 when MLM is off)."""
        return self.text_ssl_loss_weight if self.use_mlm else 0.0

    @property
    def image_ssl_weight(self) -> float:
        return self.image_ssl_loss_weight if self.use_visual_ssl else 0.0


@config_dataclass
class CLIPConfig(Config):
    dim_latent: int = 512
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    visual: VisualEncoderConfig = field(default_factory=VisualEncoderConfig)
    losses: CLIPLossConfig = field(default_factory=CLIPLossConfig)


__all__ = [
    "CLIPConfig",
    "CLIPLossConfig",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "TextEncoderConfig",
    "VisualEncoderConfig",
]
