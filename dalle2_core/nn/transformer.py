"""Causal pre-norm transformer: the denoiser inside the diffusion prior (DALL-E 2, Ramesh et al. 2022, sec. 2.2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dalle2_core.config import Config, config_dataclass
from dalle2_core.helpers import exists
from dalle2_core.nn.attention import Attention, RelPosBias
from dalle2_core.nn.feedforward import FeedForward
from dalle2_core.nn.norm import LayerNorm
from dalle2_core.nn.rotary import RotaryEmbedding

ROTARY_DIM = 32  # the LAION prior rotates the first 32 features of each 64-wide head


@config_dataclass
class CausalTransformerConfig(Config):
    """Options of `CausalTransformer` (its width `dim` is given by the owning network)."""

    depth: int
    dim_head: int = 64
    heads: int = 8
    ff_mult: float = 4
    norm_in: bool = False
    norm_out: bool = True  # the "stable" final norm
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    final_proj: bool = True
    normformer: bool = False
    rotary_emb: bool = True
    # None: logits q·k/√d + bias (modern); 128 reproduces the 1.1.0-era PB-relax numerics (LAION prior)
    pb_relax_alpha: float | None = None

    def __post_init__(self):
        for name in ("depth", "dim_head", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer {name} must be >= 1, got {getattr(self, name)}")
        if self.ff_mult <= 0:
            raise ValueError(f"ff_mult must be > 0, got {self.ff_mult}")
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.rotary_emb and self.dim_head < 2:
            raise ValueError(f"rotary_emb needs dim_head >= 2, got {self.dim_head}")
        if exists(self.pb_relax_alpha) and self.pb_relax_alpha <= 0:
            raise ValueError(f"pb_relax_alpha must be > 0 or None, got {self.pb_relax_alpha}")


class PrefixCache(NamedTuple):
    """Rotated keys and values (b, 1, p, dim_head) of a sequence's first p positions, one pair per layer."""

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[-2]


class CausalTransformer(nn.Module):
    """Stack of causal multi-query attention + SwiGLU blocks sharing one rotary embedding and T5 bias."""

    def __init__(self, dim: int, config: CausalTransformerConfig):
        super().__init__()
        c = config
        self.init_norm = LayerNorm(dim) if c.norm_in else nn.Identity()
        self.rel_pos_bias = RelPosBias(heads=c.heads)
        # rotary on at most 32 features, rounded down to even for odd narrow heads
        rotary = RotaryEmbedding(min(ROTARY_DIM, c.dim_head) // 2 * 2) if c.rotary_emb else None
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(
                        dim,
                        dim_head=c.dim_head,
                        heads=c.heads,
                        dropout=c.attn_dropout,
                        causal=True,
                        rotary_emb=rotary,
                        pb_relax_alpha=c.pb_relax_alpha,
                    ),
                    FeedForward(dim, mult=c.ff_mult, dropout=c.ff_dropout, post_activation_norm=c.normformer),
                ]
            )
            for _ in range(c.depth)
        )
        self.norm = LayerNorm(dim, stable=True) if c.norm_out else nn.Identity()
        self.project_out = nn.Linear(dim, dim, bias=False) if c.final_proj else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        prefix: PrefixCache | None = None,
        prefix_len: int = 0,
    ) -> torch.Tensor:
        """x (b, n, dim) → (b, n, dim); mask (b, n) bool, True = may be attended to.

        With `prefix` (from `encode_prefix`) x holds the positions after it: the output equals the
        last n positions of running the whole sequence, without recomputing the prefix.
        `prefix_len` p > 0 does that split here (the first p positions of x become the prefix) and
        returns only the outputs after it (b, n - p, dim): the prefix positions then skip the last
        layer's attention output and feed-forward, and the numbers equal a cached-prefix run's.
        """
        if prefix_len:
            if exists(prefix) or exists(mask):
                raise ValueError("prefix_len cannot be combined with prefix or mask")
            if not 0 < prefix_len < x.shape[1]:
                raise ValueError(f"prefix_len must be in 1..{x.shape[1] - 1} for {x.shape[1]} positions, got {prefix_len}")
            prefix, x = self.encode_prefix(x[:, :prefix_len]), x[:, prefix_len:]
        p = prefix.length if exists(prefix) else 0
        n = x.shape[1]
        x = self.init_norm(x)
        # (h, n, p + n + 1): rows of the queries after the prefix; keys include the null
        attn_bias = self.rel_pos_bias(p + n, p + n + 1, device=x.device)[:, p:]
        for i, (attn, ff) in enumerate(self.layers):
            x = attn(x, mask=mask, attn_bias=attn_bias, past_kv=prefix.kv[i] if exists(prefix) else None) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))

    def encode_prefix(self, x: torch.Tensor) -> PrefixCache:
        """Keys and values of the first positions (b, p, dim) of a sequence, for `forward(rest, prefix=...)`.

        Causal attention never lets these positions see later ones, so their keys and values are the
        same whatever follows: a sampling loop whose leading tokens (the prior's text) stay fixed
        computes them once instead of at every step.
        """
        n = x.shape[1]
        x = self.init_norm(x)
        attn_bias = self.rel_pos_bias(n, n + 1, device=x.device)
        kv = []
        for attn, ff in self.layers[:-1]:
            out, layer_kv = attn(x, attn_bias=attn_bias, return_kv=True)
            kv.append(layer_kv)
            x = out + x
            x = ff(x) + x
        # later positions read only the last layer's keys and values, never its outputs
        kv.append(self.layers[-1][0].key_values(x))
        return PrefixCache(tuple(kv))
