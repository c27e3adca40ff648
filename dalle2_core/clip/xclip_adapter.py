"""`XClipAdapter`: the project's trainable `CLIP` behind the `ClipAdapter` interface.

The name is DALLE2-pytorch's, after x-clip (lucidrains), the CLIP library whose options
`dalle2_core.CLIP` reimplements; stored model folders and DALLE2-pytorch users know it by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .adapter import ClipAdapter, EmbeddedImage, EmbeddedText
from .config import CLIPConfig
from .model import CLIP
from .tokenizer import ClipTokenizer, tokenize


class XClipAdapter(ClipAdapter):
    """Wraps a `CLIP`; prompts go through OpenAI's BPE at the CLIP's `text_seq_len`, padded with id 0 as open_clip pads
    ("!" stays text), which the CLIP's mask (`ids != 0`) reads.

    Images are handed to the CLIP in [0, 1] (resized here); the CLIP normalises them with its own
    `image_mean` / `image_std` (OpenAI's statistics by default).
    """

    def __init__(self, clip: CLIP):
        super().__init__()
        if not isinstance(clip, CLIP):
            raise TypeError(f"XClipAdapter wraps a dalle2_core CLIP, got {type(clip).__name__}")
        self.clip = clip  # the wrapped project CLIP (what checkpoints store, as `clip/`)
        self.dim_latent = clip.dim_latent
        self.dim_text = clip.dim_text
        self.image_size = clip.image_size
        self.image_channels = clip.image_channels
        self.max_text_len = clip.text_seq_len
        self._tokenizer = ClipTokenizer(clip.text_seq_len, pad_token=None)

    @property
    def config(self) -> CLIPConfig:
        return self.clip.config

    @classmethod
    def from_config(cls, config: CLIPConfig | dict) -> XClipAdapter:
        return cls(CLIP.from_config(config))

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return tokenize(self._tokenizer, texts, self.max_text_len)

    def _embed_tokens(self, tokens: torch.Tensor) -> EmbeddedText:
        return self.clip.embed_text(tokens)

    def _embed_pixels(self, images: torch.Tensor) -> EmbeddedImage:
        return self.clip.embed_image(images)


def as_clip_adapter(clip: ClipAdapter | CLIP) -> ClipAdapter:
    """What the prior and decoder hold: adapters as given, a raw project `CLIP` wrapped in `XClipAdapter`."""
    if isinstance(clip, ClipAdapter):
        return clip
    if isinstance(clip, CLIP):
        return XClipAdapter(clip)
    raise TypeError(f"expected a dalle2_core CLIP or a ClipAdapter (e.g. OpenClipAdapter), got {type(clip).__name__}")


__all__ = ["XClipAdapter", "as_clip_adapter"]
