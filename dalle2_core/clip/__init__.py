"""CLIP: the trainable project CLIP, the `ClipAdapter` interface, and open_clip's pretrained models.

`HFClipAdapter` is imported on first use (PEP 562) and the open_clip adapters import open_clip when one is
built: a model without an open_clip tower never imports open_clip (nor torchvision, which open_clip imports).
"""

import importlib

from .adapter import ClipAdapter, EmbeddedImage, EmbeddedText, resize_center_crop
from .config import CLIPConfig, CLIPLossConfig, TextEncoderConfig, VisualEncoderConfig
from .model import CLIP
from .open_clip_adapter import ClipWeightsUnavailable, OpenAIClipAdapter, OpenClipAdapter, OpenClipConfig
from .tokenizer import PromptTruncatedWarning
from .xclip_adapter import XClipAdapter, as_clip_adapter

_LAZY = {
    "HFClipAdapter": "dalle2_core.clip.hf_clip_adapter",
    "HFClipConfig": "dalle2_core.clip.hf_clip_adapter",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dalle2_core.clip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPLossConfig",
    "ClipAdapter",
    "ClipWeightsUnavailable",
    "EmbeddedImage",
    "EmbeddedText",
    "OpenAIClipAdapter",
    "OpenClipAdapter",
    "OpenClipConfig",
    "PromptTruncatedWarning",
    "TextEncoderConfig",
    "VisualEncoderConfig",
    "XClipAdapter",
    "as_clip_adapter",
    "resize_center_crop",
]
