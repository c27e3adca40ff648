"""The decoder: the U-Net network and its config (the cascaded Decoder lives beside it)."""

from .unet import Unet
from .unet_config import UnetAttentionConfig, UnetBlocksConfig, UnetConditioningConfig, UnetConfig

__all__ = ["Unet", "UnetAttentionConfig", "UnetBlocksConfig", "UnetConditioningConfig", "UnetConfig"]
