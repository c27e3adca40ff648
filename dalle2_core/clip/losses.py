"""Contrastive objectives: CLIP's InfoNCE, DCL's decoupled variant, FILIP's token-wise similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum


def info_nce(logits: torch.Tensor, decoupled: bool = False) -> torch.Tensor:
    """InfoNCE over the rows of a (b, b) logit matrix with positives on the diagonal (CLIP, Radford 2021).

    `decoupled` drops each positive from its own denominator (DCL, Yeh et al. 2021, eq. 3), so the
    loss is `logsumexp(negatives) - positive` and can go below zero.
    """
    b = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != b:
        raise ValueError(f"contrastive logits must be square (batch, batch), got {tuple(logits.shape)}")
    if not decoupled:
        return F.cross_entropy(logits, torch.arange(b, device=logits.device))
    if b < 2:
        raise ValueError(f"decoupled contrastive learning needs a batch of at least 2 pairs, got {b}")
    positives = logits.diagonal()
    eye = torch.eye(b, dtype=torch.bool, device=logits.device)
    negatives = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(negatives, dim=-1) - positives).mean()


def symmetric_contrastive_loss(
    text_to_image: torch.Tensor, image_to_text: torch.Tensor, decoupled: bool = False
) -> torch.Tensor:
    """Mean of the text->image (rows: texts) and image->text (rows: images) InfoNCE terms."""
    return (info_nce(text_to_image, decoupled) + info_nce(image_to_text, decoupled)) / 2


def token_similarities(text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every text token with every image patch: (x, t, d), (y, i, d) -> (x, y, t, i)."""
    return einsum(text_tokens, image_tokens, "x t d, y i d -> x y t i")


def filip_text_to_image(sim: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """FILIP (Yao et al. 2021, eq. 4): each text token's best patch, averaged over real tokens -> (x, y)."""
    best_patch = sim.amax(dim=-1)  # (x, y, t)
    mask = text_mask[:, None, :].to(sim.dtype)  # (x, 1, t)
    return (best_patch * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def filip_image_to_text(sim: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """FILIP (eq. 5): each patch's best real text token, averaged over patches -> (y, x), rows: images."""
    masked = sim.masked_fill(~text_mask[:, None, :, None], torch.finfo(sim.dtype).min)
    best_token = masked.amax(dim=-2)  # (x, y, i)
    return best_token.mean(dim=-1).t()


__all__ = [
    "filip_image_to_text",
    "filip_text_to_image",
    "info_nce",
    "symmetric_contrastive_loss",
    "token_similarities",
]
