"""The decoder: the U-Net network and its config (the cascaded Decoder lives beside it)."""

from .decoder import Decoder
from .unet import Unet
from .unet_config import UnetAttentionConfig, UnetBlocksConfig, UnetConditioningConfig, UnetConfig

__all__ = ["Decoder", "Unet", "UnetAttentionConfig", "UnetBlocksConfig", "UnetConditioningConfig", "UnetConfig"]
