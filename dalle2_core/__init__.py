"""dalle2_core: DALL-E 2 (unCLIP) in PyTorch — CLIP, diffusion prior, cascaded decoder."""

from dalle2_core.clip import CLIP, OpenAIClipAdapter, OpenClipAdapter, XClipAdapter
from dalle2_core.dalle2 import DALLE2
from dalle2_core.decoder.decoder import Decoder
from dalle2_core.decoder.unet import Unet
from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork
from dalle2_core.train import DecoderTrainer, DiffusionPriorTrainer
from dalle2_core.vqgan.vae import NullVQGanVAE, VQGanVAE

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "DALLE2",
    "Decoder",
    "DecoderTrainer",
    "DiffusionPrior",
    "DiffusionPriorNetwork",
    "DiffusionPriorTrainer",
    "NullVQGanVAE",
    "OpenAIClipAdapter",
    "OpenClipAdapter",
    "Unet",
    "VQGanVAE",
    "XClipAdapter",
]
