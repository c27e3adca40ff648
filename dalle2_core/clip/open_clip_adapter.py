"""Pretrained CLIPs through open_clip (any architecture and tag), behind the `ClipAdapter` interface.

open_clip (and torchvision, which it imports) is imported when an adapter is built, not with this module:
its config and error types cost nothing to a model that has no open_clip tower.
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import field

import torch
from torch import nn

from ..config import Config, config_dataclass
from ..helpers import cast_tuple, exists, l2norm
from .adapter import ClipAdapter, EmbeddedImage, EmbeddedText
from .tokenizer import tokenize

HUB_SCHEMA = "hf-hub:"


class ClipWeightsUnavailable(RuntimeError):
    """Pretrained CLIP weights could not be downloaded and are not in the local cache."""


@config_dataclass
class OpenClipConfig(Config):
    """Enough to rebuild an open_clip adapter: the weights come from open_clip's own cache."""

    name: str = "ViT-B-32"
    pretrained: str | None = "openai"
    model_kwargs: dict = field(default_factory=dict)


def openai_to_open_clip_name(name: str) -> str:
    """OpenAI's model names ("ViT-B/32", "ViT-L/14@336px", "RN50x4") to open_clip's ("ViT-B-32", ...)."""
    return name.replace("@336px", "-336").replace("/", "-")


def _check_model_name(name: str) -> None:
    import open_clip

    if name.startswith(HUB_SCHEMA) or exists(open_clip.get_model_config(name)):
        return
    close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else "; see open_clip.list_models()"
    raise ValueError(f"open_clip has no model architecture {name!r}{hint}")


def _token_state_hook_target(model: nn.Module) -> tuple[nn.Module, Callable]:
    """The module whose output is the per-token text states, and how to read them from that output."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if text is None and isinstance(getattr(model, "ln_final", None), nn.LayerNorm):
        return model.ln_final, lambda out: out  # open_clip.CLIP: text tower pieces live on the model
    if isinstance(text, TextTransformer) and text.cls_emb is None:
        return text.ln_final, lambda out: out
    if isinstance(text, HFTextEncoder):
        return text.transformer, lambda out: out.last_hidden_state
    raise TypeError(
        f"per-token text states are not supported for {type(model).__name__} with text tower "
        f"{type(text).__name__}; supported: CLIP / CustomTextCLIP with a TextTransformer or HF text tower"
    )


class OpenClipAdapter(ClipAdapter):
    """An open_clip model: `encode_text` / `encode_image` give the embeddings, l2-normalised.

    `text_encodings` are the text tower's per-token states after its final LayerNorm (for HF text
    towers: the last hidden state), zeroed after the end-of-text token. Images in [0, 1] are
    resized with the model's interpolation and normalised with its preprocessing mean / std.
    `pretrained=None` builds a randomly initialised model and downloads nothing; extra keywords go
    to `open_clip.create_model` (e.g. `embed_dim`, `vision_cfg`, `text_cfg` for a custom size).
    """

    def __init__(
        self,
        name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        cache_dir: str | None = None,
        **model_kwargs,
    ):
        import open_clip
        from open_clip.hf_model import HFTextEncoder
        from open_clip.tokenizer import SimpleTokenizer

        super().__init__()
        name = name if name.startswith(HUB_SCHEMA) else name.replace("/", "-")
        _check_model_name(name)
        self.config = OpenClipConfig(name, pretrained, dict(model_kwargs))
        self.name, self.pretrained = name, pretrained
        # the open_clip model itself (not a dalle2_core CLIP); its weights are named clip.*
        self.clip = self._create_model(name, pretrained, cache_dir, model_kwargs).eval()

        preprocess = self.clip.visual.preprocess_cfg
        size = cast_tuple(preprocess["size"], 2)
        self.image_size = size[0] if size[0] == size[1] else size
        self.image_channels = 3
        self.image_mean = tuple(preprocess["mean"])
        self.image_std = tuple(preprocess["std"])
        # training-time choices such as "random" have no eval meaning; CLIP's eval resize is bicubic
        mode = preprocess["interpolation"]
        self.resize_mode = mode if mode in ("bilinear", "bicubic") else "bicubic"
        self.max_text_len = self.clip.context_length
        self.vocab_size = self.clip.vocab_size

        # looked up per call, not stored: a module attribute would register the layer a second time
        token_module, _ = _token_state_hook_target(self.clip)
        text = getattr(self.clip, "text", None)
        if isinstance(text, HFTextEncoder):
            self.dim_text = text.config.hidden_size
        else:
            self.dim_text = token_module.normalized_shape[0]
        with torch.no_grad():  # embedding width: whatever the text projection gives (no config lookup)
            probe = torch.zeros(1, self.max_text_len, dtype=torch.long, device=self.device)
            self.dim_latent = self.clip.encode_text(probe).shape[-1]

        try:
            self._tokenizer = open_clip.get_tokenizer(name, context_length=self.max_text_len, cache_dir=cache_dir)
        except (OSError, RuntimeError, ValueError) as err:
            raise ClipWeightsUnavailable(f"could not load the tokenizer of open_clip model {name!r}: {err}") from err
        self._eot_id = self._tokenizer.eot_token_id if isinstance(self._tokenizer, SimpleTokenizer) else None
        pad = getattr(getattr(self._tokenizer, "tokenizer", None), "pad_token_id", None)
        self._pad_id = pad if exists(pad) else 0

    @classmethod
    def from_config(cls, config: OpenClipConfig | dict, cache_dir: str | None = None) -> OpenClipAdapter:
        config = OpenClipConfig.build(config, owner="OpenClipAdapter")
        return OpenClipAdapter(config.name, config.pretrained, cache_dir=cache_dir, **config.model_kwargs)

    @staticmethod
    def _create_model(name: str, pretrained: str | None, cache_dir: str | None, model_kwargs: dict) -> nn.Module:
        import open_clip
        from open_clip.pretrained import download_pretrained

        where = f"open_clip model {name!r} (pretrained={pretrained!r})"
        advice = "connect once to the Hugging Face Hub to cache them, or set cache_dir to a cache that has them"
        if name.startswith(HUB_SCHEMA):
            try:
                return open_clip.create_model(name, cache_dir=cache_dir, **model_kwargs)
            except (OSError, RuntimeError) as err:
                raise ClipWeightsUnavailable(f"could not get the weights of {where}: {err}; {advice}") from err
        if pretrained is None:
            # random init: keep the HF text tower (if any) from fetching its own base weights too
            return open_clip.create_model(name, pretrained=None, pretrained_text=False, **model_kwargs)
        if os.path.isfile(pretrained):
            try:
                return open_clip.create_model(name, pretrained=pretrained, **model_kwargs)
            except Exception as err:  # noqa: BLE001 - torch and open_clip fail on a wrong file in many ways
                # torch's own text for a refused pickle advises loading it unsafely: never pass that on
                reason = "a pickle the safe loader refused" if isinstance(err, pickle.UnpicklingError) else type(err).__name__
                raise ValueError(f"{pretrained!r} is not a file of open_clip weights for {name!r} ({reason}; nothing in it "
                                 "was run); give the model's .pt or .safetensors weights or a pretrained tag") from None
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(
                f"{pretrained!r} is neither a pretrained tag of open_clip model {name!r} nor a file; "
                f"tags: {', '.join(tags) or 'none'} (or pretrained=None for random weights)"
            )
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        try:
            # fetch (or find in the cache) first, so every download failure becomes one clear error
            download_pretrained(tag_cfg, cache_dir=cache_dir)
        except Exception as err:  # hub, HTTP and filesystem failures all surface differently
            raise ClipWeightsUnavailable(f"could not get the weights of {where}: {err}; {advice}") from err
        # OpenAI-trained weights expect QuickGELU, which the base architecture configs leave off
        return open_clip.create_model(
            name,
            pretrained=pretrained,
            cache_dir=cache_dir,
            force_quick_gelu=tag_cfg.get("quick_gelu", False),
            **model_kwargs,
        )

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return tokenize(self._tokenizer, texts, self.max_text_len)

    def text_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """True up to and including the first end-of-text token; rows without one: non-padding ids."""
        not_pad = tokens != self._pad_id
        if not exists(self._eot_id):
            return not_pad
        is_eot = tokens == self._eot_id
        before_or_at_eot = (is_eot.long().cumsum(dim=-1) - is_eot.long()) == 0
        return torch.where(is_eot.any(dim=-1, keepdim=True), before_or_at_eot, not_pad)

    def _embed_tokens(self, tokens: torch.Tensor) -> EmbeddedText:
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}) for {self.name!r}, "
                f"got ids from {int(tokens.min())} to {int(tokens.max())}"
            )
        short = self.max_text_len - tokens.shape[-1]
        if short > 0:  # the text tower's positional table and causal mask are context-sized
            tokens = torch.nn.functional.pad(tokens, (0, short), value=self._pad_id)

        captured = []
        token_module, read_tokens = _token_state_hook_target(self.clip)
        handle = token_module.register_forward_hook(lambda _m, _i, out: captured.append(read_tokens(out)))
        try:
            text_embed = self.clip.encode_text(tokens)
        finally:
            handle.remove()  # nothing outlives the call
        mask = self.text_mask(tokens)
        text_encodings = captured[-1].masked_fill(~mask[..., None], 0.0)  # (b, n, dim_text)
        return EmbeddedText(l2norm(text_embed), text_encodings, mask)

    def _embed_pixels(self, images: torch.Tensor) -> EmbeddedImage:
        dtype = next(self.clip.visual.parameters()).dtype
        mean = torch.tensor(self.image_mean, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(self.image_std, device=images.device, dtype=images.dtype)[:, None, None]
        image_embed = self.clip.encode_image(((images - mean) / std).to(dtype))
        return EmbeddedImage(l2norm(image_embed), None)


class OpenAIClipAdapter(OpenClipAdapter):
    """OpenAI's released CLIP weights (the DALLE2-pytorch README's default ViT-B/32), loaded through open_clip."""

    def __init__(self, name: str = "ViT-B/32", cache_dir: str | None = None):
        super().__init__(openai_to_open_clip_name(name), pretrained="openai", cache_dir=cache_dir)


__all__ = [
    "ClipWeightsUnavailable",
    "OpenAIClipAdapter",
    "OpenClipAdapter",
    "OpenClipConfig",
    "openai_to_open_clip_name",
]
