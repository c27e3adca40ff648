"""One narrow interface over every CLIP the prior and decoder can use (project CLIP, open_clip)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..conditioning import TextCondition
from ..helpers import cast_tuple, resize
from .tokenizer import truncate_tokens

# what `embed_text` returns: text_embed (b, dim_latent), l2-normalised; text_encodings (b, n, dim_text), zero where
# text_mask (b, n, bool, True = a real token) is False; text, the prompts or token ids given
EmbeddedText = TextCondition


class EmbeddedImage(NamedTuple):
    image_embed: torch.Tensor  # (b, dim_latent), l2-normalised
    image_encodings: torch.Tensor | None  # (b, m, dim_image) patch states, or None


def resize_center_crop(images: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize the shorter side to fit `size` (antialiased), then centre-crop: CLIP's eval preprocessing."""
    out_h, out_w = cast_tuple(size, 2)
    h, w = images.shape[-2:]
    if (h, w) == (out_h, out_w):
        return images
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        images = resize(images, (new_h, new_w), mode)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]


class ClipAdapter(nn.Module, abc.ABC):
    """Base of every CLIP wrapper: tokenize, embed_text, embed_image with l2-normalised embeddings.

    Subclasses set the attributes below in `__init__` and implement `tokenize`, `_embed_tokens`
    (ids already cut to `max_text_len` and on the model's device) and `_embed_pixels` ([0, 1]
    images already at `image_size`). The base class owns input checking and resizing, so every
    CLIP accepts the same inputs. Nothing is stored between calls.
    """

    dim_latent: int
    dim_text: int
    image_size: int | tuple[int, int]
    image_channels: int
    max_text_len: int
    resize_mode: str = "bicubic"

    @abc.abstractmethod
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(b, max_text_len) LongTensor; warns `PromptTruncatedWarning` when a prompt is cut."""

    @abc.abstractmethod
    def _embed_tokens(self, tokens: torch.Tensor) -> EmbeddedText: ...

    @abc.abstractmethod
    def _embed_pixels(self, images: torch.Tensor) -> EmbeddedImage: ...

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed_text(self, text: torch.Tensor | str | Sequence[str]) -> TextCondition:
        """Embed token ids (b, n) or prompts; ids longer than `max_text_len` are cut (with a warning)."""
        if isinstance(text, torch.Tensor):
            if text.dtype.is_floating_point or text.dtype == torch.bool or text.ndim != 2:
                raise ValueError(
                    f"text must be integer token ids of shape (batch, length), got {text.dtype} {tuple(text.shape)}"
                )
            tokens = truncate_tokens(text, self.max_text_len)
        else:
            text = [text] if isinstance(text, str) else list(text)
            tokens = self.tokenize(text).to(self.device)
        return self._embed_tokens(tokens.long())._replace(text=text)

    def embed_image(self, images: torch.Tensor) -> EmbeddedImage:
        """Embed images in [0, 1] of shape (b, c, h, w), any h and w: resized to the CLIP's size."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.dtype.is_floating_point:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (batch, channels, height, width), got {got}")
        if images.shape[1] != self.image_channels:
            raise ValueError(f"this CLIP takes {self.image_channels}-channel images, got {images.shape[1]} channels")
        return self._embed_pixels(resize_center_crop(images, self.image_size, self.resize_mode))


__all__ = ["ClipAdapter", "EmbeddedImage", "EmbeddedText", "resize_center_crop"]
