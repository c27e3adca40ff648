"""dalle2_core: DALL-E 2 (unCLIP) in PyTorch — CLIP, diffusion prior, cascaded decoder."""

from dalle2_core.train import DecoderTrainer, DiffusionPriorTrainer

__version__ = "0.1.0"

from .decoder.unet import Unet  # noqa: E402
from .decoder.decoder import Decoder  # noqa: E402
from .decoder.vqgan_vae import NullVQGanVAE, VQGanVAE  # noqa: E402
from .clip import CLIP, OpenAIClipAdapter, OpenClipAdapter, XClipAdapter  # noqa: E402
from .prior import DiffusionPrior, DiffusionPriorNetwork  # noqa: E402
from .dalle2 import DALLE2  # noqa: E402
