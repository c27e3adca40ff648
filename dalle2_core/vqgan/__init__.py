"""VQGanVAE (the latent space of latent-diffusion stages) and its parts: backbones, quantisers, GAN / perceptual losses."""

from dalle2_core.vqgan.encoders import ConvNextEncDec, ResnetEncDec, ViTEncDec
from dalle2_core.vqgan.losses import Discriminator, PerceptualLoss
from dalle2_core.vqgan.quantize import ResidualVQ, VectorQuantizer
from dalle2_core.vqgan.vae import NullVQGanVAE, VQGanVAE, VQGanVAEConfig

__all__ = [
    "ConvNextEncDec",
    "Discriminator",
    "NullVQGanVAE",
    "PerceptualLoss",
    "ResidualVQ",
    "ResnetEncDec",
    "VQGanVAE",
    "VQGanVAEConfig",
    "VectorQuantizer",
    "ViTEncDec",
]
