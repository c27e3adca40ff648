"""The ADM / GLIDE U-Net family: Karlo's networks (U-Net, text/image projection, decoder cascade), Kandinsky 2.2's image conditioning."""

from dalle2_core.adm.cascade import KarloCascade, KarloCascadeConfig
from dalle2_core.adm.config import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnetConfig
from dalle2_core.adm.image_conditioning import ImageConditioning
from dalle2_core.adm.text_proj import TextProj, TextProjConfig
from dalle2_core.adm.unet import AdmUnet

__all__ = [
    "AdmAttentionConfig",
    "AdmBlocksConfig",
    "AdmConditioningConfig",
    "AdmUnet",
    "AdmUnetConfig",
    "ImageConditioning",
    "KarloCascade",
    "KarloCascadeConfig",
    "TextProj",
    "TextProjConfig",
]
