"""A diffusers `UnCLIPPipeline` folder (Karlo v1-alpha and its fine-tunes) into a dream model folder of the karlo family.

Every network is built on `meta` from its diffusers config (`diffusers_config`) and filled from the
memory-mapped safetensors through the checked key maps of `diffusers_keys` (`materialize`), so the weights
are never held twice; pickled `.bin` weights are refused unopened. The text tower (and, from an
image-variations pipeline or a transformers CLIP folder, the vision tower) is OpenAI CLIP ViT-L/14 as open_clip
builds it, filled from the transformers weights (`HFClipAdapter`), giving the raw projections and full token states
Karlo reads; the tokenizer folder is checked to be OpenAI's BPE and its padding token is stored with the towers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from dalle2_core.checkpoint import save_model
from dalle2_core.convert import diffusers_keys as dk
from dalle2_core.convert.diffusers_folder import DiffusersFolder, DiffusersFolderError, read_diffusers_folder
from dalle2_core.convert.materialize import Rule, materialize
from dalle2_core.families.karlo import config as dc
from dalle2_core.families.karlo.defaults import KARLO_DEFAULTS
from dalle2_core.helpers import exists

UNCLIP = "UnCLIPPipeline"
IMAGE_VARIATIONS = "UnCLIPImageVariationPipeline"
CASCADE_PARTS = ("text_proj", "decoder", "super_res_first", "super_res_last")



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

    config = dc.karlo_prior_config(folder["prior"].config(), folder["prior_scheduler"].config())
    return _filled(folder, "prior", lambda: StandardizedPrior(config=config), dk.prior_key, dtype=dtype, flatten=dk.PRIOR_FLATTENED)


def convert_cascade(folder: DiffusersFolder, *, dtype: torch.dtype | None = None):
    from dalle2_core.adm import AdmUnet, TextProj
    from dalle2_core.families.karlo.cascade import KarloCascade

    config = dc.karlo_cascade_config(*(folder[n].config() for n in CASCADE_PARTS), folder["decoder_scheduler"].config(),
                                     folder["super_res_scheduler"].config())
    parts = {"text_proj": _filled(folder, "text_proj", lambda: TextProj(config.text_proj), dk.text_proj_key, dtype=dtype)}
    for name in CASCADE_PARTS[1:]:
        parts[name] = _filled(folder, name, lambda n=name: AdmUnet(getattr(config, n)), dk.unet_key, dtype=dtype)
    return KarloCascade(**parts, decoder_diffusion=config.decoder_diffusion, super_res_diffusion=config.super_res_diffusion)


def vision_tower_folders(folder: str | os.PathLike) -> tuple[Path, Path]:
    """(image encoder, feature extractor) folders of a CLIP vision tower source: an UnCLIPImageVariationPipeline
    folder (its `image_encoder/` and `feature_extractor/`), or a transformers CLIP folder holding `config.json`, the
    safetensors weights and `preprocessor_config.json` (openai/clip-vit-large-patch14: a whole CLIPModel)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        variations = read_diffusers_folder(folder, expect=IMAGE_VARIATIONS)
        check_component_classes(variations)
        return variations["image_encoder"].path, variations["feature_extractor"].path
    if (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file():
        return folder, folder
    raise DiffusersFolderError(
        f"{folder} is neither an {IMAGE_VARIATIONS} folder (model_index.json) nor a transformers CLIP folder "
        "(config.json, preprocessor_config.json and safetensors weights)"
    )


def convert_clip(folder: DiffusersFolder, vision_tower: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None):
    """The CLIP text tower (and tokenizer) of an UnCLIPPipeline folder, with the vision tower of `vision_tower`
    (`vision_tower_folders`) or of the folder itself when it has an `image_encoder`."""
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter

    if exists(vision_tower):
        image_encoder, feature_extractor = vision_tower_folders(vision_tower)
    elif "image_encoder" in folder.components:
        image_encoder, feature_extractor = folder["image_encoder"].path, folder["feature_extractor"].path
    else:
        image_encoder = feature_extractor = None
    return HFClipAdapter.from_transformers(
        text_encoder=folder["text_encoder"].path, tokenizer=folder["tokenizer"].path, image_encoder=image_encoder,
        feature_extractor=feature_extractor, normalize=False, zero_padding=False, dtype=dtype,
    )


def convert_unclip(src: str | os.PathLike, out_dir: str | os.PathLike, *, image_variations: str | os.PathLike | None = None,
                   dtype: torch.dtype | None = None) -> UnclipConversion:
    """Write the model folder `out_dir` (new or empty) from the UnCLIPPipeline folder `src`.

    `image_variations`: where the CLIP vision tower that lets the model embed pictures (variations, interpolation,
    mixes) comes from: an UnCLIPImageVariationPipeline folder or a transformers CLIP folder such as
    openai/clip-vit-large-patch14's (`vision_tower_folders`). `dtype`: store the weights in this dtype (default: as
    given).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; converting writes a new model folder")
    folder = read_diffusers_folder(src, expect=UNCLIP)
    check_component_classes(folder)
    clip = convert_clip(folder, image_variations, dtype=dtype)
    prior = convert_prior(folder, dtype=dtype)
    cascade = convert_cascade(folder, dtype=dtype)
    save_model(out_dir, clip=clip, prior=prior, decoder=cascade, defaults=KARLO_DEFAULTS, family="karlo")
    notes = [
        f"converted the {UNCLIP} folder {folder.path} (diffusers {folder.diffusers_version or 'version unknown'}): "
        "prior, text_proj, decoder, super_res_first, super_res_last and the CLIP text tower, from safetensors only",
        f"the tokenizer pads with {clip.config.pad_token!r} (read from its folder)",
        "sampling defaults are diffusers' UnCLIPPipeline call defaults: prior 25 steps, guidance 4; decoder 25 steps, "
        "guidance 8; super-resolution 7 steps",
    ]
    if clip.config.vision:
        notes.append("the CLIP vision tower was converted too: the model can embed pictures (variations, interpolation, mixes)")
    else:
        notes.append("no CLIP vision tower: give an image-variations pipeline or a transformers CLIP folder to embed pictures")
    return UnclipConversion(out_dir, notes)


def convert_folders(sources, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None, inpaint=None,
                    image_variations: str | os.PathLike | None = None) -> UnclipConversion:
    """`convert_unclip` for a list of diffusers folders: Karlo's is one UnCLIPPipeline folder (it inpaints by RePaint)."""
    if len(sources) != 1:
        raise ValueError(f"a Karlo model is converted from one {UNCLIP} folder; got {len(sources)} folders")
    if inpaint is not None:
        raise ValueError("an inpainting U-Net folder applies to Kandinsky 2.2 models; Karlo inpaints with its own decoder")
    return convert_unclip(sources[0], out_dir, image_variations=image_variations, dtype=dtype)


__all__ = [
    "COMPONENT_CLASSES", "KARLO_DEFAULTS", "UnclipConversion", "check_component_classes", "convert_cascade", "convert_clip",
    "convert_folders", "convert_prior", "convert_unclip", "vision_tower_folders",
]
