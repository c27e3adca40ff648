"""Masked language modelling on CLIP's text tower (BERT, Devlin et al. 2019; used by DeCLIP)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def choose_mlm_positions(mask: torch.Tensor, prob: float) -> torch.Tensor:
    """(b, n) bool: each real token is chosen with probability `prob`, and at least one per row."""
    r = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
    chosen = r < prob
    # short prompts would often get no target at all; force each row's lowest draw in
    at_least_one = F.one_hot(r.argmin(dim=-1), mask.shape[-1]).bool() & mask
    return chosen | at_least_one


class MaskedLanguageModel(nn.Module):
    """Predict chosen tokens from a corrupted sequence; the [MASK] id is `num_tokens` (one past the vocab)."""

    def __init__(self, dim: int, num_tokens: int, mask_prob: float = 0.15):
        super().__init__()
        self.num_tokens = num_tokens
        self.mask_token_id = num_tokens
        self.mask_prob = mask_prob
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(
        self,
        text: torch.Tensor,
        mask: torch.Tensor,
        encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`encode(ids, mask) -> (b, 1 + n, d)` is the text tower (CLS first)."""
        chosen = choose_mlm_positions(mask, self.mask_prob)
        # BERT's 80/10/10: most chosen tokens become [MASK], some a random token, the rest stay
        r = torch.rand(text.shape, device=text.device)
        corrupted = torch.where(chosen & (r < 0.8), self.mask_token_id, text)
        random_ids = torch.randint(0, self.num_tokens, text.shape, device=text.device)
        corrupted = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, corrupted)
        states = encode(corrupted, mask)[:, 1:]  # (b, n, d) without CLS
        if not chosen.any():
            return states.sum() * 0  # no real tokens in the batch: nothing to predict
        logits = self.to_logits(states[chosen])  # (k, vocab)
        return F.cross_entropy(logits, text[chosen])


__all__ = ["MaskedLanguageModel", "choose_mlm_positions"]
