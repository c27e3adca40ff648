"""OpenAI CLIP towers stored by transformers (Karlo's `text_encoder/`, `image_encoder/`), run as open_clip's towers.

The towers are open_clip's `TextTransformer` / `VisionTransformer` of a named architecture
(`ViT-L-14` for Karlo, QuickGELU as OpenAI trained it), filled from transformers' safetensors through
the checked key map of `convert/hf_clip_keys.py`. What Karlo's pipeline needs beyond the `ClipAdapter`
contract is an option each (Kakao Brain's Karlo code, `karlo/models/clip.py`, and diffusers'
`UnCLIPPipeline._encode_prompt`, which feed the prior and text_proj exactly this):
- `normalize=False`: `text_embed` / `image_embed` are the raw projections (`text_embeds`, `image_embeds`);
- `zero_padding=False`: `text_encodings` are the whole 77-token state after the final LayerNorm
  (`last_hidden_state`, not zeroed after the end-of-text token); `text_mask` is the tokenizer's
  attention mask either way (True up to and including the end-of-text token).
Tokens are OpenAI's BPE as transformers' CLIPTokenizer gives them (`clip.tokenizer.ClipTokenizer`), padded with the
padding token of the tokenizer folder the towers came with (`pad_token`: "!", id 0, for Karlo; "<|endoftext|>" for
Kandinsky 2.2's prior): the converted folder stores that token, so loading needs no tokenizer files.
Images are preprocessed as transformers' `CLIPImageProcessor`: shorter side to `resize_to` (bicubic,
antialiased; the longer side truncated to an integer as transformers does), centre crop, mean/std.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, _build_text_tower, _build_vision_tower
from open_clip.transformer import TextTransformer, VisionTransformer

from ..config import Config, config_dataclass
from ..helpers import default, exists, l2norm, resize
from .adapter import ClipAdapter, EmbeddedImage, EmbeddedText
from .tokenizer import ClipTokenizer, tokenize

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as preprocessor configs store it
# preprocessor_config.json keys that only name the class that wrote the file
_INFORMATIONAL = frozenset({"feature_extractor_type", "image_processor_type", "processor_class"})


@config_dataclass
class HFClipConfig(Config):
    """Enough to rebuild an `HFClipAdapter` (weights come from its model folder)."""

    name: str = "ViT-L-14"  # the open_clip architecture the towers follow
    model_kwargs: dict = field(default_factory=dict)  # overrides of its config, as open_clip.create_model takes them
    quick_gelu: bool = True
    text: bool = True  # which towers exist (Karlo's text-to-image repo has no image encoder)
    vision: bool = True
    normalize: bool = True  # l2-normalise text_embed / image_embed; False: the raw projections
    zero_padding: bool = True  # zero text_encodings after the end-of-text token; False: the whole last hidden state
    pad_token: str = "!"  # the tokenizer's padding token (Karlo's "!", id 0); a conversion stores its folder's
    image_mean: tuple[float, ...] = OPENAI_DATASET_MEAN
    image_std: tuple[float, ...] = OPENAI_DATASET_STD
    resize_to: int | None = None  # shorter side before the centre crop; None: the vision tower's image size


def _architecture(name: str, model_kwargs: dict) -> dict:
    base = open_clip.get_model_config(name)
    if base is None:
        raise ValueError(f"open_clip has no model architecture {name!r}; see open_clip.list_models()")
    cfg = copy.deepcopy(base)
    cfg.update(copy.deepcopy(model_kwargs))  # shallow, as open_clip.create_model applies model_kwargs
    return cfg


class HFClipAdapter(ClipAdapter):
    """open_clip text and/or vision towers behind the `ClipAdapter` interface; see the module docstring.

    `HFClipAdapter(config)` builds randomly initialised towers (what `checkpoint.load_component` fills);
    `HFClipAdapter.from_transformers(...)` reads transformers folders.
    """

    def __init__(self, config: HFClipConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = c = HFClipConfig.build(config, owner="HFClipAdapter", **kwargs)
        if not (c.text or c.vision):
            raise ValueError("HFClipAdapter needs at least one tower: text=True or vision=True")
        cfg = _architecture(c.name, c.model_kwargs)
        embed_dim, text_cfg, vision_cfg = cfg["embed_dim"], CLIPTextCfg(**cfg["text_cfg"]), CLIPVisionCfg(**cfg["vision_cfg"])
        text_cfg.output_tokens = True  # the per-token states are part of what the adapter returns
        self.text = _build_text_tower(embed_dim, text_cfg, quick_gelu=c.quick_gelu) if c.text else None
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=c.quick_gelu) if c.vision else None
        for tower, cls in ((self.text, TextTransformer), (self.visual, VisionTransformer)):
            if exists(tower) and not isinstance(tower, cls):
                raise ValueError(f"open_clip model {c.name!r} builds a {type(tower).__name__}; supported: {cls.__name__} towers")

        self.dim_latent, self.dim_text = embed_dim, text_cfg.width
        self.max_text_len, self.vocab_size = text_cfg.context_length, text_cfg.vocab_size
        self.image_size, self.image_channels = vision_cfg.image_size, 3
        self.resize_to = default(c.resize_to, vision_cfg.image_size)
        if not isinstance(self.image_size, int) or self.resize_to < self.image_size:
            raise ValueError(f"resize_to {self.resize_to} must be at least the square image size {self.image_size}")
        self._eot_id = self.vocab_size - 1  # the end-of-text token is the highest id (argmax pooling reads it)
        self._tokenizer = None  # built on first use: loading weights needs no BPE tables
        self._pad_id = None

    @classmethod
    def from_config(cls, config: HFClipConfig | dict) -> HFClipAdapter:
        return cls(config)

    @classmethod
    def from_transformers(
        cls,
        text_encoder: str | os.PathLike | None = None,
        image_encoder: str | os.PathLike | None = None,
        feature_extractor: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        *,
        name: str = "ViT-L-14",
        variant: str | None = None,
        normalize: bool = True,
        zero_padding: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> HFClipAdapter:
        """Towers from transformers folders (`config.json` + safetensors), without a second copy of the weights.

        `feature_extractor` / `tokenizer` folders, when given, are checked to be what this adapter does
        (an unsupported preprocessing or tokenizer is refused). `variant` picks e.g. `model.fp16.safetensors`.
        """
        config, parts, key_map = _transformers_plan(text_encoder, image_encoder, feature_extractor, tokenizer, name, variant)
        config = HFClipConfig.build(config, normalize=normalize, zero_padding=zero_padding)
        # convert/ imports the networks, so it is imported here
        from dalle2_core.convert.materialize import NamespacedWeights, SafetensorsWeights, materialize

        what = " + ".join(str(p) for p in (text_encoder, image_encoder) if exists(p))
        with contextlib.ExitStack() as stack:
            weights = NamespacedWeights({ns: stack.enter_context(SafetensorsWeights(files, what=str(folder)))
                                         for ns, (folder, files) in parts.items()})
            adapter = materialize(lambda: cls(config), weights, key_map, dtype=dtype, device=device, what=what)
        return adapter.eval()

    # --- text ------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> ClipTokenizer:
        if self._tokenizer is None:
            self._tokenizer = ClipTokenizer(self.max_text_len, self.config.pad_token)
        return self._tokenizer

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, texts, self.max_text_len)

    def text_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """True up to and including the first end-of-text token (transformers' attention mask of tokenised prompts);
        rows without one: the ids that are not the padding id."""
        is_eot = tokens == self._eot_id
        upto_eot = (is_eot.long().cumsum(dim=-1) - is_eot.long()) == 0
        return torch.where(is_eot.any(dim=-1, keepdim=True), upto_eot, tokens != self.tokenizer.pad_id)

    def _embed_tokens(self, tokens: torch.Tensor) -> EmbeddedText:
        if self.text is None:
            raise ValueError("this HFClipAdapter has no text tower (it was built from an image encoder only)")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got ids from {int(tokens.min())} to {int(tokens.max())}"
            )
        short = self.max_text_len - tokens.shape[-1]
        if short > 0:  # the positional table and causal mask are context-sized
            tokens = F.pad(tokens, (0, short), value=self.tokenizer.pad_id)
        pooled, states = self.text(tokens)  # (b, dim_latent), (b, n, dim_text) after the final LayerNorm
        mask = self.text_mask(tokens)
        if self.config.zero_padding:
            states = states.masked_fill(~mask[..., None], 0.0)
        return EmbeddedText(l2norm(pooled) if self.config.normalize else pooled, states, mask)

    # --- images ----------------------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (b, 3, h, w) of any size -> normalised pixel values (b, 3, s, s), as CLIPImageProcessor.

        The resized image is clamped to [0, 1] as transformers' 8-bit resize clamps it; unlike it, the
        values are not rounded to 1/255 steps (so gradients reach the input).
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.dtype.is_floating_point:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (batch, channels, height, width), got {got}")
        if images.shape[1] != self.image_channels:
            raise ValueError(f"this CLIP takes {self.image_channels}-channel images, got {images.shape[1]} channels")
        h, w = images.shape[-2:]
        short, long = min(h, w), max(h, w)
        new_long = int(self.resize_to * long / short)  # transformers' get_resize_output_image_size truncates
        new_h, new_w = (self.resize_to, new_long) if h <= w else (new_long, self.resize_to)
        if (new_h, new_w) != (h, w):
            images = resize(images, (new_h, new_w))
            images = images.clamp(0.0, 1.0)
        s = self.image_size
        top, left = int((new_h - s) / 2.0), int((new_w - s) / 2.0)
        return self._normalize(images[..., top : top + s, left : left + s])

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.image_mean, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(self.config.image_std, device=images.device, dtype=images.dtype)[:, None, None]
        return (images - mean) / std

    def embed_image(self, images: torch.Tensor) -> EmbeddedImage:
        """Embed [0, 1] images of any size, preprocessed as transformers' CLIPImageProcessor does."""
        return self.encode_pixel_values(self.preprocess(images))

    def _embed_pixels(self, images: torch.Tensor) -> EmbeddedImage:
        return self.encode_pixel_values(self._normalize(images))  # [0, 1] images already at image_size

    def encode_pixel_values(self, pixel_values: torch.Tensor) -> EmbeddedImage:
        """Embed already-normalised pixel values (b, 3, s, s), e.g. a CLIPImageProcessor's `pixel_values`."""
        if self.visual is None:
            raise ValueError("this HFClipAdapter has no vision tower (it was built from a text encoder only)")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"pixel values must have shape (batch, 3, {self.image_size}, {self.image_size}), got {tuple(pixel_values.shape)}"
            )
        dtype = next(self.visual.parameters()).dtype
        image_embed = self.visual(pixel_values.to(dtype))  # (b, dim_latent)
        return EmbeddedImage(l2norm(image_embed) if self.config.normalize else image_embed, None)


# --- transformers' preprocessing and tokenizer files ---------------------------------------------------


def _size(value, key: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and key in value and len(value) == 1:
        return value[key]
    if isinstance(value, dict) and set(value) == {"height", "width"} and value["height"] == value["width"]:
        return value["height"]
    raise ValueError(f"preprocessor size {value!r} is not supported; accepted: an int or {{{key!r}: int}}")


def preprocessor_options(config: dict, image_size: int) -> dict:
    """`HFClipConfig` preprocessing options from a CLIPImageProcessor `preprocessor_config.json`.

    Accepts what this adapter reproduces: resize of the shorter side (bicubic), centre crop to the
    tower's image size, rescale by 1/255, normalisation, RGB conversion; anything else is refused.
    """
    expected_true = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")
    accepted = {*expected_true, "size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std", *_INFORMATIONAL}
    for key, value in config.items():
        if key not in accepted:
            raise ValueError(f"preprocessor option {key}={value!r} is not supported; accepted keys: {', '.join(sorted(accepted))}")
    for key in expected_true:
        if config.get(key, True) is not True:
            raise ValueError(f"preprocessor option {key}={config[key]!r} is not supported; accepted: true")
    if config.get("resample", BICUBIC) != BICUBIC:
        raise ValueError(f"preprocessor resample={config['resample']!r} is not supported; accepted: {BICUBIC} (bicubic)")
    if abs(float(config.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ValueError(f"preprocessor rescale_factor={config['rescale_factor']!r} is not supported; accepted: 1/255")
    resize_to, crop = _size(config.get("size", image_size), "shortest_edge"), _size(config.get("crop_size", image_size), "height")
    if crop != image_size or resize_to < crop:
        raise ValueError(
            f"preprocessor size {resize_to} / crop_size {crop} do not fit the vision tower's image size {image_size}; "
            f"accepted: crop_size {image_size} and size >= crop_size"
        )
    defaults = {"image_mean": OPENAI_DATASET_MEAN, "image_std": OPENAI_DATASET_STD}
    stats = {k: tuple(float(v) for v in config.get(k, d)) for k, d in defaults.items()}
    if any(len(v) != 3 for v in stats.values()) or min(stats["image_std"]) <= 0:
        raise ValueError(f"preprocessor image_mean / image_std must be 3 values (std > 0), got {stats}")
    return {"resize_to": resize_to, **stats}


def check_tokenizer_folder(folder: str | os.PathLike, context_length: int) -> str:
    """The padding token of a Hugging Face CLIP tokenizer folder (either layout), after refusing one whose ids this
    adapter would not reproduce: not OpenAI's BPE, or another length than the text tower's."""
    return ClipTokenizer.from_folder(folder, context_length).pad_token


def _read_config(folder: Path, name: str, what: str) -> dict:
    path = folder / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: cannot read {path} ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} holds a {type(data).__name__}, not a config object")
    return data


def _overrides(name: str, embed_dim: int, towers: dict[str, dict]) -> dict:
    """`model_kwargs` turning open_clip's `name` into the towers transformers described (empty when they match)."""
    base = _architecture(name, {})
    kwargs = {"embed_dim": embed_dim} if embed_dim != base["embed_dim"] else {}
    for key, cfg_cls in (("text_cfg", CLIPTextCfg), ("vision_cfg", CLIPVisionCfg)):
        if key in towers and cfg_cls(**towers[key]) != cfg_cls(**base[key]):
            kwargs[key] = towers[key]
    return kwargs


def _transformers_plan(text_encoder, image_encoder, feature_extractor, tokenizer, name: str, variant: str | None):
    """(config, {namespace: (folder, safetensors files)}, key map) for transformers tower folders; every config is
    checked first. Two folders' tensors are read in a namespace each ("text_encoder/", "image_encoder/": both may
    hold `text_model.*`), one folder's as they are named.

    A folder may hold a whole CLIPModel (openai/clip-vit-large-patch14): the tower it is given for is read from it,
    the rest of its file is dropped, unless it is given for both towers.
    """
    from dalle2_core.convert.diffusers_folder import weight_files
    from dalle2_core.convert.hf_clip_keys import (
        open_clip_text_cfg,
        open_clip_vision_cfg,
        other_tower_drops,
        text_key_map,
        vision_key_map,
    )
    from dalle2_core.convert.materialize import in_namespace

    if text_encoder is None and image_encoder is None:
        raise ValueError("from_transformers needs a text_encoder folder, an image_encoder folder, or both")
    same = exists(text_encoder) and exists(image_encoder) and Path(text_encoder).resolve() == Path(image_encoder).resolve()
    two = exists(text_encoder) and exists(image_encoder) and not same  # two files: each read in a namespace of its own
    towers, dims, gelu, parts, key_map = {}, set(), set(), {}, []
    for folder, key, read, keys, prefix in (
        (text_encoder, "text_cfg", open_clip_text_cfg, text_key_map, "text."),
        (image_encoder, "vision_cfg", open_clip_vision_cfg, vision_key_map, "visual."),
    ):
        if folder is None:
            continue
        tower = "text" if key == "text_cfg" else "vision"
        what = f"{'text' if tower == 'text' else 'image'} encoder {folder}"
        hf_config = _read_config(Path(folder), "config.json", what)
        embed_dim, quick_gelu, towers[key] = read(hf_config)
        dims.add(embed_dim)
        gelu.add(quick_gelu)
        namespace = f"{'text' if tower == 'text' else 'image'}_encoder/" if two else ""
        entries = keys(towers[key]["layers"], prefix)
        if not (same and tower == "vision"):
            parts[namespace] = (folder, weight_files(folder, variant, what))
            drops = other_tower_drops(hf_config, tower)
            entries += [d for d in drops if d.source == "logit_scale"] if same else drops
        key_map += in_namespace(entries, namespace)
    if len(dims) > 1 or len(gelu) > 1:
        raise ValueError(f"the text and image encoders disagree: projection_dim {sorted(dims)}, quick_gelu {sorted(gelu)}")
    options = {}
    if exists(feature_extractor):
        image_size = towers.get("vision_cfg", _architecture(name, {})["vision_cfg"])["image_size"]
        prep = _read_config(Path(feature_extractor), "preprocessor_config.json", f"feature extractor {feature_extractor}")
        options = preprocessor_options(prep, image_size)
    model_kwargs = _overrides(name, dims.pop(), towers)
    if exists(tokenizer):
        options["pad_token"] = check_tokenizer_folder(tokenizer, _architecture(name, model_kwargs)["text_cfg"]["context_length"])
    config = HFClipConfig(
        name=name, model_kwargs=model_kwargs, quick_gelu=gelu.pop(), text=exists(text_encoder), vision=exists(image_encoder),
        **options,
    )
    return config, parts, key_map


__all__ = ["HFClipAdapter", "HFClipConfig", "check_tokenizer_folder", "preprocessor_options"]
