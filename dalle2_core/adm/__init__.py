"""The ADM / GLIDE U-Net (Dhariwal & Nichol 2021) that Karlo and Kandinsky 2.2 share: the U-Net, Karlo's text/image
projection, Kandinsky 2.2's image conditioning. The families' cascades live in their folders."""

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
    "TextProj",
    "TextProjConfig",
]
