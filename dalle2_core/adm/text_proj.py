"""unCLIP's conditioning of the decoder on CLIP (Ramesh et al. 2022 sec. 2.1), as Karlo builds it.

"We modify the architecture described in Nichol et al. (2021) by projecting and adding CLIP
embeddings to the existing timestep embedding, and by projecting CLIP embeddings into four extra
tokens of context that are concatenated to the sequence of outputs from the GLIDE text encoder."
Karlo's text encoder outputs are CLIP's own text token states, projected and LayerNorm'd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import Config, config_dataclass
from ..helpers import exists


@config_dataclass
class TextProjConfig(Config):
    clip_dim: int = 768  # CLIP embedding and text-state width
    time_embed_dim: int = 1280  # the decoder's time embedding width
    context_dim: int = 1536  # the decoder's context token width
    num_image_tokens: int = 4  # extra context tokens made from the image embedding

    def __post_init__(self):
        for name in ("clip_dim", "time_embed_dim", "context_dim", "num_image_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


class TextProj(nn.Module):
    """(image embed, text embed, text states, text mask) -> (context, context mask, added time embedding).

    `null_image_embed` is the learned image embedding of the unconditional branch of guidance
    (Karlo trains the decoder with the image embedding dropped to it); the text of that branch is
    the empty prompt's CLIP encoding, given by the caller.
    """

    def __init__(self, config: TextProjConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = c = TextProjConfig.build(config, owner="TextProj", **kwargs)
        self.null_image_embed = nn.Parameter(torch.zeros(c.clip_dim))
        self.text_embed_to_time = nn.Linear(c.clip_dim, c.time_embed_dim)
        self.image_embed_to_time = nn.Linear(c.clip_dim, c.time_embed_dim)
        self.image_embed_to_tokens = nn.Linear(c.clip_dim, c.num_image_tokens * c.context_dim)
        self.text_states_proj = nn.Linear(c.clip_dim, c.context_dim)
        self.text_states_norm = nn.LayerNorm(c.context_dim)

    @classmethod
    def from_config(cls, config: TextProjConfig | dict) -> TextProj:
        return cls(config=config)

    def null_image_embeds(self, batch: int) -> torch.Tensor:
        """The learned unconditional image embedding for `batch` rows (b, clip_dim)."""
        return self.null_image_embed[None].expand(batch, -1)

    def forward(
        self,
        image_embed: torch.Tensor,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """image_embed, text_embed (b, clip_dim); text_encodings (b, n, clip_dim); text_mask (b, n) bool.

        Returns the decoder's keywords: `context` (b, num_image_tokens + n, context_dim) = [image tokens,
        normalised text states], `context_mask` (b, num_image_tokens + n) with the image tokens always
        attended, and `added_time_embed` (b, time_embed_dim).
        """
        c = self.config
        b = image_embed.shape[0]
        for name, value in (("image_embed", image_embed), ("text_embed", text_embed)):
            if value.shape != (b, c.clip_dim):
                raise ValueError(f"{name} must have shape ({b}, {c.clip_dim}), got {tuple(value.shape)}")
        if text_encodings.ndim != 3 or text_encodings.shape[0] != b or text_encodings.shape[2] != c.clip_dim:
            raise ValueError(f"text_encodings must have shape ({b}, n, {c.clip_dim}), got {tuple(text_encodings.shape)}")
        if exists(text_mask) and text_mask.shape != text_encodings.shape[:2]:
            raise ValueError(f"text_mask must have shape {tuple(text_encodings.shape[:2])}, got {tuple(text_mask.shape)}")
        added = self.text_embed_to_time(text_embed) + self.image_embed_to_time(image_embed)
        # token i takes every num_image_tokens-th feature: features are laid out (context_dim, tokens)
        image_tokens = rearrange(self.image_embed_to_tokens(image_embed), "b (d n) -> b n d", n=c.num_image_tokens)
        text_tokens = self.text_states_norm(self.text_states_proj(text_encodings))
        context = torch.cat([image_tokens, text_tokens], dim=1)  # (b, tokens + n, context_dim)
        text_mask = text_mask.bool() if exists(text_mask) else torch.ones(text_encodings.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = F.pad(text_mask, (c.num_image_tokens, 0), value=True)  # (b, tokens + n)
        return dict(context=context, context_mask=context_mask, added_time_embed=added)


__all__ = ["TextProj", "TextProjConfig"]
