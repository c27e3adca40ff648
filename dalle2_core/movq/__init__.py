"""MoVQ: the VQGAN with spatially modulated decoder norms whose latent space Kandinsky 2.2's decoder diffuses in."""

from dalle2_core.movq.config import MoVQConfig
from dalle2_core.movq.model import MoVQ

__all__ = ["MoVQ", "MoVQConfig"]
