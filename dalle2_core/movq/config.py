"""The typed config of MoVQ (Zheng et al. 2022), the autoencoder whose latent space Kandinsky 2.2's decoder diffuses in."""

from __future__ import annotations

from ..config import Config, config_dataclass

# SpatialNorm's GroupNorm has 32 groups and every norm eps 1e-6, whatever the encoder's norm_groups (as trained)
SPATIAL_NORM_GROUPS = 32
NORM_EPS = 1e-6


@config_dataclass
class MoVQConfig(Config):
    """Levels run from the highest resolution down; the decoder mirrors the encoder with one resnet more per level."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4  # the latent the diffusion runs on, also the codebook's width
    widths: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 2  # resnets per encoder level
    attention: tuple[bool, ...] = (False, False, False, True)  # per level, highest resolution first; the middle always attends
    norm_groups: int = 32  # the encoder's GroupNorms
    codebook_size: int = 16384

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_groups", "codebook_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths!r}")
        bad = [w for w in self.widths if w % self.norm_groups or w % SPATIAL_NORM_GROUPS]
        if bad:
            raise ValueError(f"widths {bad} must be multiples of norm_groups={self.norm_groups} and of {SPATIAL_NORM_GROUPS} (SpatialNorm)")
        if len(self.attention) != len(self.widths):
            raise ValueError(f"attention {self.attention!r} needs one value per width ({len(self.widths)})")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.widths) - 1)


__all__ = ["NORM_EPS", "SPATIAL_NORM_GROUPS", "MoVQConfig"]
