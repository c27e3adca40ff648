"""Karlo's prior network: a causal decoder-only transformer over [text states, text embed, time, x_t, read-out].

DALL-E 2 sec. 2.2 and App. C: "a decoder-only Transformer with a causal attention mask on a sequence
consisting of, in order: the encoded text, the CLIP text embedding, an embedding for the diffusion
timestep, the noised CLIP image embedding, and a final embedding whose output from the Transformer
is used to predict the unnoised CLIP image embedding". Karlo's transformer is wider than CLIP (2048
vs 768), so every input is projected in and the read-out projected back; positions are a learned
absolute embedding; blocks are pre-LayerNorm with biased multi-head attention and a GELU MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_core.adm.attention import MASKED_LOGIT
from dalle2_core.adm.embedding import TimestepEmbedding
from dalle2_core.config import Config, config_dataclass
from dalle2_core.helpers import default, exists

# tokens after the text states: text embedding, time, noised image embedding, read-out
NUM_EXTRA_TOKENS = 4


@config_dataclass
class PriorTransformerConfig(Config):
    embed_dim: int = 768  # CLIP embedding (input, output) and text-state width
    heads: int = 32
    head_dim: int = 64  # width = heads × head_dim
    depth: int = 20
    num_text_tokens: int = 77
    time_embed_dim: int | None = None  # hidden width of the time MLP; None: the transformer width
    ff_mult: int = 4
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("embed_dim", "heads", "head_dim", "depth", "num_text_tokens", "ff_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def seq_len(self) -> int:
        return self.num_text_tokens + NUM_EXTRA_TOKENS


class PriorSelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections (Vaswani et al. 2017) via SDPA."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (b, n, width), bias (b, 1, n, n) additive logits -> (b, n, width)."""
        split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)), attn_mask=bias)
        return self.dropout(self.to_out(rearrange(out, "b h n d -> b n (h d)")))


class PriorBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, c: PriorTransformerConfig):
        super().__init__()
        width = c.width
        self.attn_norm = nn.LayerNorm(width, eps=c.norm_eps)
        self.attn = PriorSelfAttention(width, c.heads, c.dropout)
        self.ff_norm = nn.LayerNorm(width, eps=c.norm_eps)
        self.ff_in = nn.Linear(width, c.ff_mult * width)
        self.ff_out = nn.Linear(c.ff_mult * width, width)
        self.ff_dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias)
        return x + self.ff_out(self.ff_dropout(F.gelu(self.ff_in(self.ff_norm(x)))))


class PriorTransformer(nn.Module):
    """`net(image_embed_noised, t, *, text_embed, text_encodings, text_mask=None)` -> the prediction (b, embed_dim)."""

    def __init__(self, config: PriorTransformerConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = c = PriorTransformerConfig.build(config, owner="PriorTransformer", **kwargs)
        width = c.width
        self.time_embed = TimestepEmbedding(width, default(c.time_embed_dim, width), width)
        self.image_embed_proj = nn.Linear(c.embed_dim, width)
        self.text_embed_proj = nn.Linear(c.embed_dim, width)
        self.text_states_proj = nn.Linear(c.embed_dim, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, width))
        self.readout = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList([PriorBlock(c) for _ in range(c.depth)])
        self.norm_out = nn.LayerNorm(width, eps=c.norm_eps)
        self.proj_out = nn.Linear(width, c.embed_dim)

    @classmethod
    def from_config(cls, config: PriorTransformerConfig | dict) -> PriorTransformer:
        return cls(config=config)

    def attention_bias(self, text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Causal plus text-padding additive logits (b, 1, n, n): `MASKED_LOGIT` above the diagonal and on
        padded text keys (the two add up where both apply, as in Karlo)."""
        n = self.config.seq_len
        causal = torch.full((n, n), MASKED_LOGIT, dtype=dtype, device=text_mask.device).triu(1)
        padding = F.pad((1.0 - text_mask.to(dtype)) * MASKED_LOGIT, (0, NUM_EXTRA_TOKENS))  # (b, n)
        return (padding[:, None, :] + causal)[:, None]  # (b, 1, n, n)

    def forward(
        self,
        image_embed_noised: torch.Tensor,
        t: torch.Tensor,
        *,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t, text_embed (b, embed_dim); t (b,) or scalar; text_encodings (b, num_text_tokens, embed_dim);
        text_mask (b, num_text_tokens) bool, True = a real token (default: all True; the causal mask always
        applies)."""
        c = self.config
        b = image_embed_noised.shape[0]
        for name, value in (("image_embed_noised", image_embed_noised), ("text_embed", text_embed)):
            if value.shape != (b, c.embed_dim):
                raise ValueError(f"{name} must have shape ({b}, {c.embed_dim}), got {tuple(value.shape)}")
        if text_encodings.shape != (b, c.num_text_tokens, c.embed_dim):
            raise ValueError(
                f"text_encodings must have shape ({b}, {c.num_text_tokens}, {c.embed_dim}), got {tuple(text_encodings.shape)}"
            )
        if exists(text_mask) and text_mask.shape != (b, c.num_text_tokens):
            raise ValueError(f"text_mask must have shape ({b}, {c.num_text_tokens}), got {tuple(text_mask.shape)}")
        t = torch.as_tensor(t, device=image_embed_noised.device)
        t = t.expand(b) if t.ndim == 0 else t
        text_mask = default(text_mask, lambda: torch.ones(b, c.num_text_tokens, dtype=torch.bool, device=t.device))

        tokens = torch.cat(
            [
                self.text_states_proj(text_encodings),  # (b, n_text, width)
                self.text_embed_proj(text_embed)[:, None],
                self.time_embed(t)[:, None],
                self.image_embed_proj(image_embed_noised)[:, None],
                self.readout.to(image_embed_noised.dtype).expand(b, -1, -1),
            ],
            dim=1,
        )  # (b, seq_len, width)
        h = tokens + self.pos_embed.to(tokens.dtype)
        bias = self.attention_bias(text_mask, h.dtype)
        for block in self.blocks:
            h = block(h, bias)
        return self.proj_out(self.norm_out(h)[:, -1])


__all__ = ["NUM_EXTRA_TOKENS", "PriorBlock", "PriorSelfAttention", "PriorTransformer", "PriorTransformerConfig"]
