"""The typed config of the ADM / GLIDE U-Net (Dhariwal & Nichol 2021; Nichol et al. 2022) Karlo uses.

Two settings of the same family: the text- and image-conditioned 64 px decoder of unCLIP (Ramesh et
al. 2022 sec. 2.1; attention at 32/16/8 px over [context tokens || pixels], learned variance) and
the unconditioned 64 -> 256 super-resolution U-Nets (no attention, the upsampled low-resolution image
concatenated to the input channels).
"""

from __future__ import annotations

from dataclasses import field

from ..config import Config, config_dataclass
from ..helpers import default, exists


@config_dataclass
class AdmConditioningConfig(Config):
    """What the U-Net sees besides x_t and t."""

    time_embed_dim: int | None = None  # width of the time embedding; None: 4 × widths[0] (ADM)
    # the caller adds an embedding of time_embed_dim to the time embedding (unCLIP's projected CLIP
    # embeddings, Ramesh et al. sec. 2.1)
    added_time_embed: bool = False
    context_dim: int | None = None  # width of the context tokens the attention layers read; None: no context
    # Kandinsky 2.2: the U-Net is given a CLIP image embedding of this width and makes its own conditioning from
    # it: `image_tokens` context tokens and a term added to the time embedding (`adm.image_conditioning`)
    image_embed_dim: int | None = None
    image_tokens: int = 32


@config_dataclass
class AdmAttentionConfig(Config):
    """Which resolution levels attend; every attention layer is joint self + context attention."""

    levels: tuple[bool, ...] = ()  # one per level, highest resolution first; () = no attention
    middle: bool = False  # attention between the two middle resnet blocks
    head_dim: int = 64  # heads = channels // head_dim


@config_dataclass
class AdmBlocksConfig(Config):
    """The resnet blocks: GroupNorm, time conditioning, dropout."""

    scale_shift: bool = True  # AdaGN h·(1 + scale) + shift (ADM); False: the time embedding is added before norm2
    norm_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0


@config_dataclass
class AdmUnetConfig(Config):
    """ADM U-Net: `layers_per_block` resnets (+ attention) per level, resnet down/up-sampling, ADM skips."""

    sample_size: int = 64  # the resolution it denoises (a sampler draws noise of this size)
    in_channels: int = 3
    out_channels: int = 3  # twice the image channels with learned variance
    widths: tuple[int, ...] = (320, 640, 960, 1280)
    layers_per_block: int = 3
    conditioning: AdmConditioningConfig = field(default_factory=AdmConditioningConfig)
    attention: AdmAttentionConfig = field(default_factory=AdmAttentionConfig)
    blocks: AdmBlocksConfig = field(default_factory=AdmBlocksConfig)

    def __post_init__(self):
        for name in ("sample_size", "in_channels", "out_channels", "layers_per_block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths!r}")
        groups = self.blocks.norm_groups
        if any(w % groups for w in self.widths):
            raise ValueError(f"every width must be a multiple of norm_groups={groups}, got widths {self.widths}")
        if self.sample_size % self.downsample_factor:
            raise ValueError(f"sample_size {self.sample_size} must be a multiple of {self.downsample_factor} (2 ** (levels - 1))")
        levels = self.attention.levels
        if levels and len(levels) != len(self.widths):
            raise ValueError(f"attention levels {levels!r} need one value per width ({len(self.widths)}), or none")
        if self.attends and not exists(self.conditioning.context_dim):
            raise ValueError("attention layers read context tokens: give context_dim (or turn attention off)")
        cond = self.conditioning
        if exists(cond.image_embed_dim):
            for name in ("image_embed_dim", "image_tokens"):
                value = getattr(cond, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be a positive int, got {value!r}")
            if not self.attends:
                raise ValueError("image_embed_dim makes context tokens: the U-Net needs attention layers to read them")
        head_dim = self.attention.head_dim
        attending = [w for w, on in zip(self.widths, levels) if on] + ([self.widths[-1]] if self.attention.middle else [])
        bad = [w for w in attending if w % head_dim]
        if bad:
            raise ValueError(f"attention widths {bad} are not multiples of head_dim={head_dim}")

    @property
    def attends(self) -> bool:
        return any(self.attention.levels) or self.attention.middle

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def time_embed_dim(self) -> int:
        return default(self.conditioning.time_embed_dim, 4 * self.widths[0])

    def level_attends(self, level: int) -> bool:
        return bool(self.attention.levels) and bool(self.attention.levels[level])


__all__ = ["AdmAttentionConfig", "AdmBlocksConfig", "AdmConditioningConfig", "AdmUnetConfig"]
