"""Kandinsky 2.2's conditioning of the ADM U-Net on a CLIP image embedding alone (no text reaches the decoder).

As unCLIP's decoder (Ramesh et al. 2022 sec. 2.1) projects the CLIP embedding into extra context tokens and
into the timestep embedding, Kandinsky 2.2 makes both from the image embedding: a Linear to `tokens` ×
`context_dim` features, read as `tokens` context tokens and LayerNorm'd (diffusers' `ImageProjection`), and a
Linear to the time-embedding width, LayerNorm'd, added to the timestep embedding (`ImageTimeEmbedding`).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class ImageConditioning(nn.Module):
    """image embedding (b, image_embed_dim) -> context tokens (b, tokens, context_dim) and a time term (b, time_dim)."""

    def __init__(self, image_embed_dim: int, context_dim: int, time_dim: int, tokens: int = 32):
        super().__init__()
        self.image_embed_dim, self.tokens = image_embed_dim, tokens
        self.to_tokens = nn.Linear(image_embed_dim, tokens * context_dim)
        self.tokens_norm = nn.LayerNorm(context_dim)
        self.to_time = nn.Linear(image_embed_dim, time_dim)
        self.time_norm = nn.LayerNorm(time_dim)

    def context(self, image_embed: torch.Tensor) -> torch.Tensor:
        # token i takes features [i · context_dim, (i + 1) · context_dim): laid out (tokens, context_dim)
        tokens = rearrange(self.to_tokens(image_embed), "b (n d) -> b n d", n=self.tokens)  # (b, tokens, context_dim)
        return self.tokens_norm(tokens)

    def time(self, image_embed: torch.Tensor) -> torch.Tensor:
        return self.time_norm(self.to_time(image_embed))  # (b, time_dim)


__all__ = ["ImageConditioning"]
