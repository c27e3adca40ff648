"""Model sizes for `dream train`, chosen from the output image size; a JSON file can override them.

Each preset is plain keyword arguments for the DALLE2-pytorch README's API (`CLIP(**clip)`, `DiffusionPriorNetwork(
**prior_network)`, `DiffusionPrior(**prior)`, `Unet(**unet)` per stage, `Decoder(**decoder)`), so
an override file reads like the README's examples.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

SECTIONS = ("clip", "prior_network", "prior", "unets", "decoder")


def _cascade(image_size: int) -> tuple[int, ...]:
    """Image sizes of the unet cascade: one unet up to 32 px, else a base unet and 2x/4x upsamplers."""
    if image_size <= 32:
        return (image_size,)
    base = min(64, image_size // 2)
    sizes = [base]
    while sizes[-1] * 4 <= image_size:
        sizes.append(sizes[-1] * 4 if sizes[-1] * 4 == image_size else sizes[-1] * 2)
    if sizes[-1] != image_size:
        sizes.append(image_size)
    return tuple(sizes)


def default_presets(image_size: int, clip_widths: tuple[int, int] | None = None) -> dict:
    """Small, CPU-trainable sizes for `image_size` (a power of two, 16 to 1024).

    `clip_widths` = (embedding width, text-encoding width) of a CLIP that is not the project's (a
    pretrained one): the prior and the unets then take embeddings that wide."""
    if not isinstance(image_size, int) or image_size < 16 or image_size > 1024 or image_size & (image_size - 1):
        raise ValueError(f"image size {image_size} is not supported; accepted: a power of two from 16 to 1024")
    small = image_size <= 64
    clip_size = min(image_size, 64 if small else 224)
    latent = 128 if small else 512  # the prior works at the CLIP embedding width
    embed, text = clip_widths or (latent, latent)
    sizes = _cascade(image_size)
    unets = []
    for i, size in enumerate(sizes):
        depth = max(2, min(4, size.bit_length() - 4))  # 32 px: 2 levels... 256 px: 4 levels
        unets.append(
            dict(
                dim=(32 if small else 128) if i == 0 else (16 if small else 64),
                dim_mults=tuple(2**k for k in range(depth)),
                cond_dim=64 if small else 256,
                image_embed_dim=embed,
                text_embed_dim=text,
                cond_on_text_encodings=i == 0,
                self_attn=tuple(k == depth - 1 for k in range(depth)) if i == 0 else False,
                attn_heads=4 if small else 8,
                attn_dim_head=16 if small else 64,
                num_resnet_blocks=1 if small else 2,
            )
        )
    return {
        "clip": dict(
            dim_text=latent,  # the prior reads the text encodings at its own width
            dim_image=64 if small else 512,
            dim_latent=latent,
            text_enc_depth=2 if small else 6,
            text_seq_len=32 if small else 77,
            text_heads=4 if small else 8,
            visual_enc_depth=2 if small else 6,
            visual_image_size=clip_size,
            visual_patch_size=clip_size // 8,
            visual_heads=4 if small else 8,
        ),
        "prior_network": dict(dim=embed, depth=2 if small else 6, dim_head=32 if small else 64, heads=4 if small else 8),
        # the prior reads the text encodings at its own width: only a CLIP whose widths agree can give them
        "prior": dict(timesteps=1000, sample_timesteps=50, cond_drop_prob=0.1, condition_on_text_encodings=embed == text),
        "unets": unets,
        "decoder": dict(
            image_sizes=sizes,
            timesteps=1000,
            sample_timesteps=50,
            image_cond_drop_prob=0.1,
            text_cond_drop_prob=0.1,
            condition_on_text_encodings=True,
        ),
    }


def read_overrides(override_file: str | Path) -> dict:
    """The sections of a JSON override file, checked to be sections this file knows."""
    path = Path(override_file)
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path} could not be read as JSON: {err}") from None
    if not isinstance(overrides, dict) or set(overrides) - set(SECTIONS):
        raise ValueError(f"config file {path} must be a JSON object with sections from: {', '.join(SECTIONS)}")
    for section, value in overrides.items():
        if not isinstance(value, list if section == "unets" else dict):
            kind = "a list with one object per unet" if section == "unets" else "an object"
            raise ValueError(f"config file {path}: {section!r} must be {kind}")
    return overrides


def load_presets(image_size: int, override_file: str | Path | None = None, clip_widths: tuple[int, int] | None = None) -> dict:
    """`default_presets(image_size, clip_widths)` with the sections of a JSON override file merged on top."""
    presets = copy.deepcopy(default_presets(image_size, clip_widths))
    if override_file is None:
        return presets
    path = Path(override_file)
    for section, value in read_overrides(path).items():
        if section == "unets":
            presets["unets"] = [
                {**(presets["unets"][i] if i < len(presets["unets"]) else {}), **unet} for i, unet in enumerate(value)
            ]
        else:
            presets[section].update(value)
    if len(presets["unets"]) != len(presets["decoder"]["image_sizes"]):
        raise ValueError(
            f"config file {path}: {len(presets['unets'])} unets for image_sizes {presets['decoder']['image_sizes']}"
        )
    return presets
