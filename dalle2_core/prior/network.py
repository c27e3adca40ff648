"""DiffusionPriorNetwork: the causal transformer that denoises CLIP image embeddings (DALL-E 2, sec. 2.2)."""

from __future__ import annotations

import torch
from einops.layers.torch import Rearrange
from torch import nn

from dalle2_core.config import Config, config_dataclass
from dalle2_core.helpers import exists
from dalle2_core.nn import MLP, CausalTransformer, CausalTransformerConfig, PrefixCache, SinusoidalPosEmb


@config_dataclass
class DiffusionPriorNetworkConfig(Config):
    """Token layout options; the transformer's own options live in `transformer`."""

    transformer: CausalTransformerConfig
    dim: int
    num_timesteps: int | None = None  # learned time table; None → sinusoidal time + MLP
    max_text_len: int = 256
    num_time_embeds: int = 1
    num_image_embeds: int = 1
    num_text_embeds: int = 1

    def __post_init__(self):
        if self.dim < 4 or self.dim % 2:
            raise ValueError(f"DiffusionPriorNetwork dim must be even and >= 4, got {self.dim}")
        if exists(self.num_timesteps) and self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1 or None, got {self.num_timesteps}")
        for name in ("max_text_len", "num_time_embeds", "num_image_embeds", "num_text_embeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _check_mask(name: str, mask: torch.Tensor | None, b: int) -> None:
    if exists(mask) and (mask.dtype != torch.bool or mask.shape != (b,)):
        raise ValueError(f"{name} must be a bool tensor of shape ({b},), got {mask.dtype} {tuple(mask.shape)}")


def _to_tokens(dim: int, n: int) -> nn.Sequential:
    """(b, dim) → (b, n, dim): projected to n tokens when n > 1."""
    return nn.Sequential(nn.Linear(dim, dim * n) if n > 1 else nn.Identity(), Rearrange("b (n d) -> b n d", n=n))


class DiffusionPriorNetwork(nn.Module):
    """Predicts the denoised image embedding from [text encodings, text embed, time, noised image, query].

    The sequence order follows DALL-E 2 sec. 2.2; the output is the last (learned query) token.
    Text positions that are padding (all-zero encodings, or False in `text_mask`) take a learned
    per-position null vector (the DALL-E 1 padding scheme the LAION prior uses), and
    `cond_drop_mask` swaps the whole text condition for learned nulls (classifier-free guidance).
    """

    def __init__(self, config: DiffusionPriorNetworkConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = c = DiffusionPriorNetworkConfig.build(config, owner="DiffusionPriorNetwork", **kwargs)
        dim = c.dim
        self.to_text_embeds = _to_tokens(dim, c.num_text_embeds)
        self.to_image_embeds = _to_tokens(dim, c.num_image_embeds)
        time_embed = (
            nn.Embedding(c.num_timesteps, dim * c.num_time_embeds)
            if exists(c.num_timesteps)
            else nn.Sequential(SinusoidalPosEmb(dim), MLP(dim, dim * c.num_time_embeds))
        )
        self.to_time_embeds = nn.Sequential(time_embed, Rearrange("b (n d) -> b n d", n=c.num_time_embeds))
        self.learned_query = nn.Parameter(torch.randn(dim))
        self.causal_transformer = CausalTransformer(dim, c.transformer)

        self.null_text_encodings = nn.Parameter(torch.randn(1, c.max_text_len, dim))
        self.null_text_embeds = nn.Parameter(torch.randn(1, c.num_text_embeds, dim))
        self.null_image_embed = nn.Parameter(torch.randn(1, dim))

    @classmethod
    def from_config(cls, config: DiffusionPriorNetworkConfig | dict) -> DiffusionPriorNetwork:
        return cls(config)

    @property
    def dim(self) -> int:
        return self.config.dim

    def _check_text(self, b, text_embed, text_encodings, text_mask, cond_drop_mask):
        dim = self.config.dim
        if text_embed is None or tuple(text_embed.shape) != (b, dim):
            raise ValueError(f"text_embed must be ({b}, {dim}), got {None if text_embed is None else tuple(text_embed.shape)}")
        if exists(text_encodings):
            if text_encodings.ndim != 3 or text_encodings.shape[0] != b or text_encodings.shape[2] != dim:
                raise ValueError(
                    f"text_encodings must be ({b}, n, {dim}) (width = the network dim), got {tuple(text_encodings.shape)}"
                )
            if text_encodings.shape[1] > self.config.max_text_len:
                raise ValueError(
                    f"text_encodings has {text_encodings.shape[1]} tokens; this network accepts at most "
                    f"max_text_len={self.config.max_text_len}"
                )
            if exists(text_mask) and tuple(text_mask.shape) != tuple(text_encodings.shape[:2]):
                raise ValueError(f"text_mask must be {tuple(text_encodings.shape[:2])}, got {tuple(text_mask.shape)}")
        elif exists(text_mask):
            raise ValueError("text_mask was given without text_encodings")
        _check_mask("cond_drop_mask", cond_drop_mask, b)

    def _check_inputs(self, image_embed, t, image_drop_mask):
        b, dim = image_embed.shape[0], self.config.dim
        if image_embed.ndim != 2 or image_embed.shape[1] != dim:
            raise ValueError(f"image_embed must be (b, {dim}), got {tuple(image_embed.shape)}")
        if t.shape != (b,):
            raise ValueError(f"timesteps must be ({b},), got {tuple(t.shape)}")
        _check_mask("image_drop_mask", image_drop_mask, b)

    def forward(
        self,
        image_embed: torch.Tensor,
        t: torch.Tensor,
        *,
        text_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        cond_drop_mask: torch.Tensor | None = None,
        image_drop_mask: torch.Tensor | None = None,
        text_prefix: PrefixCache | None = None,
    ) -> torch.Tensor:
        """(b, dim) noised image embedding, (b,) timesteps → (b, dim) prediction.

        `cond_drop_mask` (b,) True = learned null text embed and null text encodings.
        `image_drop_mask` (b,) True = learned null in place of the noised image embedding.
        `text_prefix` (from `encode_text`) replaces the four text arguments: the text is then not
        re-encoded, which is what a sampling loop wants since it is the same at every step.
        """
        self._check_inputs(image_embed, t, image_drop_mask)
        b, dtype = image_embed.shape[0], image_embed.dtype
        c = self.config

        image_tokens = self.to_image_embeds(image_embed)  # (b, num_image_embeds, d)
        if exists(image_drop_mask):
            image_tokens = torch.where(image_drop_mask[:, None, None], self.null_image_embed.to(dtype), image_tokens)
        if exists(c.num_timesteps):
            time_tokens = self.to_time_embeds(t.long())
        else:
            time_tokens = self.to_time_embeds(t.to(dtype))
        query = self.learned_query.to(dtype).expand(b, 1, -1)  # (b, 1, d)
        tokens = [time_tokens.to(dtype), image_tokens, query]

        if exists(text_prefix):
            if any(exists(v) for v in (text_embed, text_encodings, text_mask, cond_drop_mask)):
                raise ValueError("give either text_prefix or the text arguments (text_embed, ...), not both")
            if text_prefix.kv[0][0].shape[0] != b:
                raise ValueError(f"text_prefix was encoded for batch {text_prefix.kv[0][0].shape[0]}, image_embed has {b}")
            out = self.causal_transformer(torch.cat(tokens, dim=1), prefix=text_prefix)
        else:
            text = self._text_tokens(b, text_embed, text_encodings, text_mask, cond_drop_mask, dtype)
            # split the text off as a prefix, as sampling does (same numbers): only the query's output
            # is read, so the text positions skip the last layer's attention output and feed-forward
            out = self.causal_transformer(torch.cat((text, *tokens), dim=1), prefix_len=text.shape[1])
        return out[:, -1]  # (b, d): the learned query

    def encode_text(
        self,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        cond_drop_mask: torch.Tensor | None = None,
    ) -> PrefixCache:
        """The text tokens' keys and values in every layer, for `forward(..., text_prefix=...)`.

        The text comes first in the causal sequence, so no later token (time, noised image, query)
        changes what it contributes: one encoding serves every sampling step.
        """
        b = text_embed.shape[0]
        text = self._text_tokens(b, text_embed, text_encodings, text_mask, cond_drop_mask, text_embed.dtype)
        if not exists(cond_drop_mask):
            return self.causal_transformer.encode_prefix(text)
        # every dropped row is the same all-null text (guidance's unconditional half): encode one of
        # them and share it. One host sync, once per sampling run.
        kept = (~cond_drop_mask).nonzero().squeeze(1)
        if kept.numel() >= b - 1:
            return self.causal_transformer.encode_prefix(text)
        rows = torch.cat((kept, cond_drop_mask.nonzero()[:1, 0]))  # kept rows, then one dropped row
        source = torch.full((b,), kept.numel(), dtype=torch.long, device=text.device)  # row of `rows` per row
        source[kept] = torch.arange(kept.numel(), device=text.device)
        unique = self.causal_transformer.encode_prefix(text[rows])
        return PrefixCache(tuple((k[source], v[source]) for k, v in unique.kv))

    def _text_tokens(self, b, text_embed, text_encodings, text_mask, cond_drop_mask, dtype) -> torch.Tensor:
        """[text encodings padded to max_text_len (when given), text embed tokens] (b, p, d)."""
        self._check_text(b, text_embed, text_encodings, text_mask, cond_drop_mask)
        text_tokens = self.to_text_embeds(text_embed.to(dtype))  # (b, num_text_embeds, d)
        if exists(cond_drop_mask):
            text_tokens = torch.where(cond_drop_mask[:, None, None], self.null_text_embeds.to(dtype), text_tokens)
        if not exists(text_encodings):
            return text_tokens
        return torch.cat((self._encoding_tokens(text_encodings.to(dtype), text_mask, cond_drop_mask), text_tokens), dim=1)

    def _encoding_tokens(self, text_encodings, text_mask, cond_drop_mask) -> torch.Tensor:
        """(b, max_text_len, d) text tokens: padding and dropped rows replaced by learned nulls."""
        b, n, _ = text_encodings.shape
        keep = (text_encodings != 0).any(dim=-1)  # all-zero rows are padding (LAION convention)
        if exists(text_mask):
            keep = keep & text_mask
        if exists(cond_drop_mask):
            keep = keep & ~cond_drop_mask[:, None]
        nulls = self.null_text_encodings.to(text_encodings.dtype)
        # positions past the given length are padding too: they always take their null vectors
        tokens = torch.where(keep[..., None], text_encodings, nulls[:, :n])  # (b, n, d)
        return torch.cat((tokens, nulls[:, n:].expand(b, -1, -1)), dim=1)  # (b, max_text_len, d)
