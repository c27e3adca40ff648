"""A diffusers `UnCLIPPipeline` folder (Karlo v1-alpha and its fine-tunes) into a dream model folder of the karlo family.

Every network is built on `meta` from its diffusers config (`diffusers_config`) and filled from the
memory-mapped safetensors through the checked key maps of `diffusers_keys` (`materialize`), so the weights
are never held twice; pickled `.bin` weights are refused unopened. The text tower (and, from an
image-variations pipeline folder, the vision tower) is OpenAI CLIP ViT-L/14 as open_clip builds it, filled
from the transformers weights (`HFClipAdapter`), giving the raw projections and full token states Karlo reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from dalle2_core.checkpoint import SamplingSettings, save_model
from dalle2_core.convert import diffusers_config as dc, diffusers_keys as dk
from dalle2_core.convert.diffusers_folder import DiffusersFolder, read_diffusers_folder
from dalle2_core.convert.materialize import Rule, materialize
from dalle2_core.helpers import exists

UNCLIP = "UnCLIPPipeline"
IMAGE_VARIATIONS = "UnCLIPImageVariationPipeline"
CASCADE_PARTS = ("text_proj", "decoder", "super_res_first", "super_res_last")
# diffusers' UnCLIPPipeline.__call__ defaults (its scheduler configs hold no step counts or guidance)
KARLO_DEFAULTS = SamplingSettings(cond_scale=(8.0, 1.0), prior_cond_scale=4.0, prior_samples=1, steps=(25, 7), prior_steps=25,
                                  sampler="ddpm")


# the classes that write the components this converter reads (transformers' tokenizers and processors have two names)
COMPONENT_CLASSES = {
    "prior": ("PriorTransformer",), "text_proj": ("UnCLIPTextProjModel",), "decoder": ("UNet2DConditionModel",),
    "super_res_first": ("UNet2DModel",), "super_res_last": ("UNet2DModel",), "prior_scheduler": ("UnCLIPScheduler",),
    "decoder_scheduler": ("UnCLIPScheduler",), "super_res_scheduler": ("UnCLIPScheduler",),
    "text_encoder": ("CLIPTextModelWithProjection",), "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "image_encoder": ("CLIPVisionModelWithProjection",), "feature_extractor": ("CLIPImageProcessor", "CLIPFeatureExtractor"),
}


def check_component_classes(folder: DiffusersFolder) -> None:
    """Refuse a folder whose model_index.json names a class this converter does not read for one of its components
    (a fine-tune with another prior, a renamed component): its weights would be read as something they are not."""
    for name, component in folder.components.items():
        accepted = COMPONENT_CLASSES.get(name)
        if accepted is not None and component.class_name not in accepted:
            raise ValueError(f"{folder.path / 'model_index.json'} names {name!r} as {component.library}.{component.class_name}; "
                             f"this converter reads {name} as {' or '.join(accepted)}")


class UnclipConversion(NamedTuple):
    path: Path
    notes: list[str]


def _key_map(weights, rename: Callable[[str, str], str], what: str, flatten: tuple[str, ...] = ()) -> list[Rule]:
    """One rule per diffusers tensor: renamed onto our module; the named (1, d) statistics become (d,)."""
    return [Rule(rename(k, what), (k,), (lambda t: t.reshape(-1)) if k in flatten else None) for k in weights.keys()]


def _filled(folder: DiffusersFolder, name: str, build: Callable, rename, *, dtype, flatten=()) -> torch.nn.Module:
    # tensors that need no cast stay views of the memory-mapped file, which lives as long as they do
    with folder[name].open_weights() as weights:
        return materialize(build, weights, _key_map(weights, rename, name, flatten), dtype=dtype, what=name)


def convert_prior(folder: DiffusersFolder, *, dtype: torch.dtype | None = None):
    from dalle2_core.prior import StandardizedPrior

    config = dc.standardized_prior_config(folder["prior"].config(), folder["prior_scheduler"].config())
    return _filled(folder, "prior", lambda: StandardizedPrior(config=config), dk.prior_key, dtype=dtype, flatten=dk.PRIOR_FLATTENED)


def convert_cascade(folder: DiffusersFolder, *, dtype: torch.dtype | None = None):
    from dalle2_core.adm import AdmUnet, KarloCascade, TextProj

    config = dc.karlo_cascade_config(*(folder[n].config() for n in CASCADE_PARTS), folder["decoder_scheduler"].config(),
                                     folder["super_res_scheduler"].config())
    parts = {"text_proj": _filled(folder, "text_proj", lambda: TextProj(config.text_proj), dk.text_proj_key, dtype=dtype)}
    for name in CASCADE_PARTS[1:]:
        parts[name] = _filled(folder, name, lambda n=name: AdmUnet(getattr(config, n)), dk.unet_key, dtype=dtype)
    return KarloCascade(**parts, decoder_diffusion=config.decoder_diffusion, super_res_diffusion=config.super_res_diffusion)


def convert_clip(folder: DiffusersFolder, image_variations: DiffusersFolder | None = None, *, dtype: torch.dtype | None = None):
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter

    vision = image_variations if exists(image_variations) else folder if "image_encoder" in folder.components else None
    return HFClipAdapter.from_transformers(
        text_encoder=folder["text_encoder"].path, tokenizer=folder["tokenizer"].path,
        image_encoder=vision["image_encoder"].path if exists(vision) else None,
        feature_extractor=vision["feature_extractor"].path if exists(vision) else None,
        normalize=False, zero_padding=False, dtype=dtype,
    )


def convert_unclip(src: str | os.PathLike, out_dir: str | os.PathLike, *, image_variations: str | os.PathLike | None = None,
                   dtype: torch.dtype | None = None) -> UnclipConversion:
    """Write the model folder `out_dir` (new or empty) from the UnCLIPPipeline folder `src`.

    `image_variations`: an UnCLIPImageVariationPipeline folder whose CLIP vision tower lets the model embed
    pictures (variations, interpolation, mixes). `dtype`: store the weights in this dtype (default: as given).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; converting writes a new model folder")
    folder = read_diffusers_folder(src, expect=UNCLIP)
    variations = read_diffusers_folder(image_variations, expect=IMAGE_VARIATIONS) if exists(image_variations) else None
    for each in (folder, variations) if exists(variations) else (folder,):
        check_component_classes(each)
    clip = convert_clip(folder, variations, dtype=dtype)
    prior = convert_prior(folder, dtype=dtype)
    cascade = convert_cascade(folder, dtype=dtype)
    save_model(out_dir, clip=clip, prior=prior, decoder=cascade, defaults=KARLO_DEFAULTS, family="karlo")
    notes = [
        f"converted the {UNCLIP} folder {folder.path} (diffusers {folder.diffusers_version or 'version unknown'}): "
        "prior, text_proj, decoder, super_res_first, super_res_last and the CLIP text tower, from safetensors only",
        "sampling defaults are diffusers' UnCLIPPipeline call defaults: prior 25 steps, guidance 4; decoder 25 steps, "
        "guidance 8; super-resolution 7 steps",
    ]
    if exists(variations) or "image_encoder" in folder.components:
        notes.append("the CLIP vision tower was converted too: the model can embed pictures (--image, interpolate, mix)")
    else:
        notes.append("no CLIP vision tower: give the image-variations pipeline folder to embed pictures")
    return UnclipConversion(out_dir, notes)


__all__ = ["COMPONENT_CLASSES", "KARLO_DEFAULTS", "UnclipConversion", "check_component_classes", "convert_cascade", "convert_clip",
           "convert_prior", "convert_unclip"]
