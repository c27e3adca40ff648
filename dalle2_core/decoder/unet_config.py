"""The typed config of the decoder U-Net: conditioning, attention and block sub-configs."""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from ..config import Config, config_dataclass
from ..helpers import cast_tuple, default, exists

BLOCK_TYPES = ("resnet", "convnext")
AUTO_CHECKPOINT_PIXELS = 4 * 256 * 256  # batch x height x width
# selective recomputation turns itself on when a training forward would keep more than this
# (estimated by `unet.saved_activation_bytes`); below it the recomputation only costs time
AUTO_RECOMPUTE_BYTES = 2 * 2**30
DOWNSAMPLE_MODES = ("conv", "unshuffle")


@config_dataclass
class UnetConditioningConfig(Config):
    """What the U-Net sees besides x_t and t: CLIP image embedding, text encodings, low-res image."""

    image_embed_dim: int | None = None
    text_embed_dim: int | None = None
    cond_dim: int | None = None  # width of the cross-attention tokens; default: dim
    num_image_tokens: int = 4
    num_time_tokens: int = 2
    # None: True exactly when image_embed_dim is given (base unets); the Decoder sets it per stage
    cond_on_image_embeds: bool | None = None
    cond_on_text_encodings: bool = False
    add_image_embeds_to_time: bool = True  # unCLIP Sec. 2.1: "projecting and adding CLIP embeddings"
    max_text_len: int = 256
    lowres_cond: bool = False  # cascaded diffusion: the upsampled low-res image is concatenated
    lowres_noise_cond: bool = False  # Imagen's noise augmentation level as a second "timestep"

    def __post_init__(self):
        if self.cond_on_image_embeds is None:  # resolved once, so the stored config is explicit
            object.__setattr__(self, "cond_on_image_embeds", exists(self.image_embed_dim))
        if self.cond_on_image_embeds and not exists(self.image_embed_dim):
            raise ValueError("cond_on_image_embeds=True needs image_embed_dim (the CLIP embedding width)")
        if self.cond_on_text_encodings and not exists(self.text_embed_dim):
            raise ValueError("cond_on_text_encodings=True needs text_embed_dim (the CLIP text encoding width)")
        for name in ("num_image_tokens", "num_time_tokens", "max_text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@config_dataclass
class UnetAttentionConfig(Config):
    """Which stages attend, and how: full self-attention, linear attention or window/grid attention."""

    self_attn: bool | tuple[bool, ...] = False  # full attention, per stage
    attn_heads: int = 16
    attn_dim_head: int = 32
    sparse_attn: bool | tuple[bool, ...] = False  # efficient attention on stages without self_attn
    sparse_attn_window: int | None = None  # None: linear attention; an int: MaxViT window/grid size
    attend_at_middle: bool = True
    cross_attn_heads: int = 8
    cross_attn_dim_head: int = 64
    linear_attn_normalize_v: bool = False  # DALLE2-pytorch 1.4+; off for 1.1.0 (LAION) weights

    def __post_init__(self):
        if exists(self.sparse_attn_window) and self.sparse_attn_window < 1:
            raise ValueError(f"sparse_attn_window must be None or >= 1, got {self.sparse_attn_window}")


@config_dataclass
class UnetBlocksConfig(Config):
    """The convolutional skeleton: block type and count per stage, stem, resamplers, skips, head."""

    block_type: str = "resnet"
    num_resnet_blocks: int | tuple[int, ...] = 2
    resnet_groups: int | tuple[int, ...] = 8
    convnext_mult: int = 2
    memory_efficient: bool = False  # Imagen's Efficient U-Net: downsample first, narrower skips
    init_dim: int | None = None
    init_conv_kernel_size: int = 7
    init_cross_embed: bool = True
    init_cross_embed_kernel_sizes: tuple[int, ...] = (3, 7, 15)
    cross_embed_downsample: bool = False
    cross_embed_downsample_kernel_sizes: tuple[int, ...] = (2, 4)
    downsample_mode: str = "conv"  # 'conv' (stride-2 4x4, 1.1.0) or 'unshuffle' (pixel-unshuffle + 1x1)
    pixel_shuffle_upsample: bool = True
    scale_skip_connection: bool = False
    final_conv_kernel_size: int = 1
    # recompute each block in the backward pass (about half the activation memory, ~1.5x the time);
    # None: on when a training batch holds >= AUTO_CHECKPOINT_PIXELS pixels, so the DALLE2-pytorch README's
    # 512-1024 px cascades train within 24 GB
    gradient_checkpointing: bool | None = None
    # selective recomputation (Korthikanti et al. 2022): each Block's GroupNorm/FiLM/SiLU and each
    # spatial cross-attention run again in the backward pass instead of keeping their outputs
    # (~25% less peak memory, ~5-10% more time; same gradients). None: on when the estimated saved
    # activations of a training forward pass AUTO_RECOMPUTE_BYTES
    selective_recompute: bool | None = None

    def __post_init__(self):
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"unknown block_type {self.block_type!r}; accepted: {', '.join(BLOCK_TYPES)}")
        if self.downsample_mode not in DOWNSAMPLE_MODES:
            raise ValueError(
                f"unknown downsample_mode {self.downsample_mode!r}; accepted: {', '.join(DOWNSAMPLE_MODES)}"
            )
        for name in ("init_conv_kernel_size", "final_conv_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (same-size padding), got {getattr(self, name)}")


@config_dataclass
class UnetConfig(Config):
    """Decoder U-Net (unCLIP, Ramesh et al. 2022, Sec. 2.1; an ADM U-Net, Nichol & Dhariwal 2021)."""

    # the DALLE2-pytorch README's and DALLE2-pytorch's spellings of the same options
    ALIASES: ClassVar[dict] = {
        "learned_sigma": ("learned_variance", None),
        "use_convnext": ("block_type", lambda on: "convnext" if on else "resnet"),
    }

    dim: int
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    channels: int = 3
    channels_out: int | None = None  # default: channels, doubled when learned_variance
    learned_variance: bool = False
    conditioning: UnetConditioningConfig = field(default_factory=UnetConditioningConfig)
    attention: UnetAttentionConfig = field(default_factory=UnetAttentionConfig)
    blocks: UnetBlocksConfig = field(default_factory=UnetBlocksConfig)

    def __post_init__(self):
        if self.dim < 4 or self.dim % 2:
            raise ValueError(f"dim must be an even number >= 4, got {self.dim}")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ValueError(f"dim_mults must be a non-empty tuple of positive ints, got {self.dim_mults!r}")
        if self.learned_variance and exists(self.channels_out) and self.channels_out != 2 * self.channels:
            raise ValueError(
                f"learned_variance needs channels_out == 2 * channels = {2 * self.channels}, got {self.channels_out}"
            )
        stages = len(self.dim_mults)
        for sub, name in (
            (self.attention, "self_attn"),
            (self.attention, "sparse_attn"),
            (self.blocks, "num_resnet_blocks"),
            (self.blocks, "resnet_groups"),
        ):
            value = getattr(sub, name)
            if isinstance(value, tuple) and len(value) != stages:
                raise ValueError(f"{name} has {len(value)} values {value!r}, expected one per stage ({stages})")

    @property
    def num_stages(self) -> int:
        return len(self.dim_mults)

    @property
    def resolved_channels_out(self) -> int:
        return default(self.channels_out, self.channels * (2 if self.learned_variance else 1))

    def per_stage(self, name: str) -> tuple:
        """A per-stage option (self_attn, sparse_attn, num_resnet_blocks, resnet_groups) as one value per stage."""
        sub = self.attention if name in ("self_attn", "sparse_attn") else self.blocks
        return cast_tuple(getattr(sub, name), self.num_stages)


__all__ = [
    "UnetAttentionConfig",
    "UnetBlocksConfig",
    "UnetConditioningConfig",
    "UnetConfig",
]
