"""The diffusion prior: text embedding → CLIP image embedding (DALL-E 2, Ramesh et al. 2022, sec. 2.2)."""

from dalle2_core.prior.network import DiffusionPriorNetwork, DiffusionPriorNetworkConfig

__all__ = ["DiffusionPriorNetwork", "DiffusionPriorNetworkConfig"]
