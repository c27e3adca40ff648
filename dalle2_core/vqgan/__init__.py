"""Building blocks of the VQGanVAE: backbones, vector quantisers and GAN / perceptual losses."""

from dalle2_core.vqgan.encoders import ConvNextEncDec, ResnetEncDec, ViTEncDec
from dalle2_core.vqgan.losses import Discriminator, PerceptualLoss
from dalle2_core.vqgan.quantize import ResidualVQ, VectorQuantizer

__all__ = [
    "ConvNextEncDec",
    "Discriminator",
    "PerceptualLoss",
    "ResidualVQ",
    "ResnetEncDec",
    "VectorQuantizer",
    "ViTEncDec",
]
