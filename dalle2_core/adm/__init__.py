"""Karlo's networks in the ADM / GLIDE family: the U-Net, unCLIP's text/image projection and the decoder cascade."""

from dalle2_core.adm.cascade import KarloCascade, KarloCascadeConfig
from dalle2_core.adm.config import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnetConfig
from dalle2_core.adm.text_proj import TextProj, TextProjConfig
from dalle2_core.adm.unet import AdmUnet

__all__ = [
    "AdmAttentionConfig",
    "AdmBlocksConfig",
    "AdmConditioningConfig",
    "AdmUnet",
    "AdmUnetConfig",
    "KarloCascade",
    "KarloCascadeConfig",
    "TextProj",
    "TextProjConfig",
]
