"""CLIP: the trainable project CLIP, the `ClipAdapter` interface, and open_clip's pretrained models."""

from .adapter import ClipAdapter, EmbeddedImage, EmbeddedText, resize_center_crop
from .config import CLIPConfig, CLIPLossConfig, TextEncoderConfig, VisualEncoderConfig
from .hf_clip_adapter import HFClipAdapter as HFClipAdapter, HFClipConfig as HFClipConfig
from .model import CLIP
from .open_clip_adapter import ClipWeightsUnavailable, OpenAIClipAdapter, OpenClipAdapter, OpenClipConfig
from .tokenizer import PromptTruncatedWarning
from .xclip_adapter import XClipAdapter, as_clip_adapter

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
