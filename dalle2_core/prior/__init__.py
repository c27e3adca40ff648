"""The diffusion prior: text embedding → CLIP image embedding (DALL-E 2, Ramesh et al. 2022, sec. 2.2)."""

from dalle2_core.prior.network import DiffusionPriorNetwork, DiffusionPriorNetworkConfig
from dalle2_core.prior.prior import DiffusionPrior, DiffusionPriorConfig, rerank_by_similarity
from dalle2_core.prior.prior_transformer import PriorTransformer, PriorTransformerConfig
from dalle2_core.prior.standardized_prior import StandardizedPrior, StandardizedPriorConfig

__all__ = [
    "DiffusionPrior", "DiffusionPriorConfig", "DiffusionPriorNetwork", "DiffusionPriorNetworkConfig", "PriorTransformer",
    "PriorTransformerConfig", "StandardizedPrior", "StandardizedPriorConfig", "rerank_by_similarity",
]
