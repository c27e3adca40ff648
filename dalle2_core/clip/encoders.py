"""CLIP's two towers: a text transformer and a ViT, both on torch's own pre-norm encoder layers."""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from .config import TextEncoderConfig, VisualEncoderConfig


def pre_norm_encoder(dim: int, depth: int, heads: int, ff_mult: int) -> nn.TransformerEncoder:
    """Pre-LayerNorm transformer stack with a final norm (ViT / GPT-2 style, as CLIP uses)."""
    layer = nn.TransformerEncoderLayer(
        d_model=dim,
        nhead=heads,
        dim_feedforward=dim * ff_mult,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    # nested tensors are off because pre-norm layers cannot use them (torch would warn)
    return nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class TextTransformer(nn.Module):
    """Bidirectional text encoder with a learned CLS token in front (x-clip's text tower)."""

    def __init__(self, config: TextEncoderConfig, extra_tokens: int = 0):
        super().__init__()
        self.config = config
        # extra_tokens: ids past the vocabulary reserved for training (the MLM [MASK] token)
        self.token_emb = nn.Embedding(config.num_text_tokens + extra_tokens, config.dim_text)
        self.pos_emb = nn.Parameter(torch.randn(config.text_seq_len, config.dim_text) * 0.01)
        self.cls_token = nn.Parameter(torch.randn(config.dim_text) * 0.02)
        self.encoder = pre_norm_encoder(config.dim_text, config.text_enc_depth, config.text_heads, config.text_ff_mult)

    def check_tokens(self, text: torch.Tensor) -> None:
        cfg = self.config
        if text.ndim != 2 or text.dtype.is_floating_point:
            raise ValueError(f"text must be integer token ids (batch, length), got {text.dtype} {tuple(text.shape)}")
        if text.shape[1] > cfg.text_seq_len:
            raise ValueError(f"text has {text.shape[1]} tokens but this CLIP's text_seq_len is {cfg.text_seq_len}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= cfg.num_text_tokens):
            raise ValueError(
                f"token ids must lie in [0, {cfg.num_text_tokens}) (num_text_tokens), got ids from "
                f"{int(text.min())} to {int(text.max())}"
            )

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(b, n) ids and (b, n) mask (True = real token) -> (b, 1 + n, dim_text); position 0 is CLS."""
        n = text.shape[1]
        x = self.token_emb(text) + self.pos_emb[:n]
        cls = repeat(self.cls_token, "d -> b 1 d", b=x.shape[0])
        x = torch.cat((cls, x), dim=1)  # (b, 1 + n, d)
        # the CLS position is always attended, so no row is fully masked
        keep = torch.cat((mask.new_ones(mask.shape[0], 1), mask), dim=1)
        return self.encoder(x, src_key_padding_mask=~keep)


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2020): patch embedding, CLS token, learned positions."""

    def __init__(self, config: VisualEncoderConfig):
        super().__init__()
        self.config = config
        p, dim = config.visual_patch_size, config.dim_image
        self.to_patches = nn.Conv2d(config.channels, dim, kernel_size=p, stride=p)
        self.pos_emb = nn.Parameter(torch.randn(config.num_patches, dim) * 0.01)
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.norm_in = nn.LayerNorm(dim)
        self.encoder = pre_norm_encoder(dim, config.visual_enc_depth, config.visual_heads, config.visual_ff_mult)

    def check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.channels, cfg.visual_image_size, cfg.visual_image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, expected))}), got {tuple(images.shape)}; "
                "wrap the CLIP in XClipAdapter to embed images of other sizes"
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels to the CLIP's input statistics."""
        mean = torch.tensor(self.config.image_mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(self.config.image_std, device=images.device, dtype=images.dtype)
        return (images - mean[:, None, None]) / std[:, None, None]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) images in [0, 1] -> (b, 1 + patches, dim_image); position 0 is CLS."""
        x = self.to_patches(self.normalize(images))
        x = rearrange(x, "b d h w -> b (h w) d") + self.pos_emb
        cls = repeat(self.cls_token, "d -> b 1 d", b=x.shape[0])
        x = self.norm_in(torch.cat((cls, x), dim=1))  # (b, 1 + patches, d)
        return self.encoder(x)


__all__ = ["TextTransformer", "VisionTransformer", "pre_norm_encoder"]
