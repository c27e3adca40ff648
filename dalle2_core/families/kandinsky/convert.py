"""Kandinsky 2.2 pipeline folders in diffusers' layout into a dream model folder of the kandinsky family.

Reads a `KandinskyV22PriorPipeline` folder (kandinsky-community/kandinsky-2-2-prior), a `KandinskyV22Pipeline`
folder (kandinsky-2-2-decoder) and optionally a `KandinskyV22InpaintPipeline` folder (kandinsky-2-2-decoder-inpaint),
or any fine-tune in those layouts. Every network is built on `meta` from its config (`families.kandinsky.config`)
and filled from the memory-mapped safetensors through checked key maps (`convert.materialize`); pickled weights
are refused unopened. The CLIP towers are OpenCLIP ViT-bigG/14's, filled from transformers' names (`HFClipAdapter`).

The model folder holds what text-to-image loads (clip: the text tower; prior; decoder: U-Net, MoVQ and the zero-image
embedding) and, beside them, what only some commands load: `image_encoder/` (the vision tower, kept in its stored
float16) and `decoder_inpaint/` (the inpainting U-Net). The zero-image embedding, the unconditional image embedding
of the decoder's guidance, is the vision tower's embedding of the all-zero pixel values (diffusers' `get_zero_embed`
feeds zeros after normalisation, i.e. the mean-coloured picture); it is computed once here, so text-to-image never
needs the 3.7 GB vision tower.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from dalle2_core.atomic import fsync_dir, temp_dir_beside
from dalle2_core.checkpoint import save_model
from dalle2_core.component import save_component
from dalle2_core.convert import diffusers_keys as dk
from dalle2_core.convert.diffusers_folder import DiffusersFolder, read_diffusers_folder
from dalle2_core.convert.materialize import Rule, materialize
from dalle2_core.families.kandinsky import config as kc, keys
from dalle2_core.families.kandinsky.defaults import DECODER_INPAINT, IMAGE_ENCODER, KANDINSKY_DEFAULTS
from dalle2_core.helpers import exists

PRIOR_PIPELINES = ("KandinskyV22PriorPipeline",)
DECODER_PIPELINES = ("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline")
INPAINT_PIPELINES = ("KandinskyV22InpaintPipeline",)
CLIP_ARCHITECTURE = "ViT-bigG-14"  # open_clip's name of the towers; their widths come from the transformers configs
# the diffusers components each folder must have, with safetensors weights where they are networks
NEEDED = {
    "prior": ("prior", "text_encoder", "tokenizer", "image_encoder", "image_processor", "scheduler"),
    "decoder": ("unet", "movq", "scheduler"),
    "inpaint": ("unet",),
}
WEIGHTED = ("prior", "text_encoder", "image_encoder", "unet", "movq")


class KandinskyConversion(NamedTuple):
    path: Path
    notes: list[str]


def _key_map(weights, rename, what: str, flatten: tuple[str, ...] = ()) -> list[Rule]:
    """One rule per diffusers tensor: renamed onto our module; the named (1, d) statistics become (d,)."""
    return [Rule(rename(k, what), (k,), (lambda t: t.reshape(-1)) if k in flatten else None) for k in weights.keys()]


def _filled(folder: DiffusersFolder, name: str, build, rename, *, dtype, flatten=(), what: str | None = None) -> torch.nn.Module:
    what = what or name
    with folder[name].open_weights() as weights:
        return materialize(build, weights, _key_map(weights, rename, what, flatten), dtype=dtype, what=what)


def _check_folders(folders: dict[str, DiffusersFolder]) -> None:
    """Refuse, before anything is built: a missing component, weights that are only pickles, an unsupported config."""
    for role, folder in folders.items():
        for name in NEEDED[role]:
            component = folder[name]
            if name in WEIGHTED:
                component.weight_files()  # PickleWeightsRefused / DiffusersFolderError, one line
    prior, decoder = folders["prior"], folders["decoder"]
    kc.prior_config(prior["prior"].config(), prior["scheduler"].config())
    unet = kc.decoder_config(decoder["unet"].config(), decoder["movq"].config(), decoder["scheduler"].config()).unet
    if "inpaint" in folders:
        _check_inpaint(kc.unet_config(folders["inpaint"]["unet"].config(), "inpaint unet (UNet2DConditionModel)"), unet)


def convert_text_tower(prior: DiffusersFolder, *, dtype: torch.dtype | None = None):
    """The text tower (clip component): raw projection `text_embed` and the whole 77-token state, as the prior reads them,
    with the padding token of the folder's tokenizer (Kandinsky's `<|endoftext|>`)."""
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter

    return HFClipAdapter.from_transformers(
        text_encoder=prior["text_encoder"].path, tokenizer=prior["tokenizer"].path, name=CLIP_ARCHITECTURE, normalize=False,
        zero_padding=False, dtype=dtype,
    )


def convert_vision_tower(prior: DiffusersFolder, *, dtype: torch.dtype | None = None):
    """(vision tower in `dtype`, default its stored dtype; the zero-image embedding (image_embed_dim,) in float32)."""
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter

    component = prior["image_encoder"]
    with component.open_weights() as weights:
        stored = weights.dtype("visual_projection.weight") if "visual_projection.weight" in weights else torch.float32
    # float32 for the embedding of the zero image; a float16 file is cast tensor by tensor as it is read
    tower = HFClipAdapter.from_transformers(
        image_encoder=component.path, feature_extractor=prior["image_processor"].path, name=CLIP_ARCHITECTURE, normalize=False,
        dtype=torch.float32,
    )
    size = tower.image_size
    with torch.no_grad():
        zero_embed = tower.encode_pixel_values(torch.zeros(1, 3, size, size)).image_embed[0]  # (image_embed_dim,)
    return tower.to(dtype or stored), zero_embed


def convert_prior(prior: DiffusersFolder, *, dtype: torch.dtype | None = None):
    from dalle2_core.prior import StandardizedPrior

    config = kc.prior_config(prior["prior"].config(), prior["scheduler"].config())
    return _filled(prior, "prior", lambda: StandardizedPrior(config=config), dk.prior_key, dtype=dtype, flatten=dk.PRIOR_FLATTENED)


def convert_unet(folder: DiffusersFolder, *, dtype: torch.dtype | None = None, what: str = "unet"):
    from dalle2_core.adm import AdmUnet

    config = kc.unet_config(folder["unet"].config(), f"{what} (UNet2DConditionModel)")
    return _filled(folder, "unet", lambda: AdmUnet(config), keys.unet_key, dtype=dtype, what=what)


def convert_decoder(decoder: DiffusersFolder, null_image_embed: torch.Tensor, *, dtype: torch.dtype | None = None):
    """U-Net + MoVQ + the zero-image embedding (`KandinskyDecoder`)."""
    from dalle2_core.families.kandinsky.decoder import KandinskyDecoder
    from dalle2_core.movq import MoVQ

    config = kc.decoder_config(decoder["unet"].config(), decoder["movq"].config(), decoder["scheduler"].config())
    movq = _filled(decoder, "movq", lambda: MoVQ(config.movq), keys.movq_key, dtype=dtype)
    module = KandinskyDecoder(convert_unet(decoder, dtype=dtype), movq, config=config)
    expected = (config.unet.conditioning.image_embed_dim,)
    if tuple(null_image_embed.shape) != expected:
        got = tuple(null_image_embed.shape)
        raise ValueError(f"the image encoder embeds in {got}; the decoder U-Net reads image embeddings {expected}")
    module.null_image_embed = null_image_embed.to(dtype or torch.float32)
    return module


def _check_inpaint(c, d) -> None:
    """The inpainting U-Net's config `c` must be the decoder U-Net's `d` but for its input channels."""
    latent = d.in_channels
    same = dataclasses.replace(c, in_channels=latent) == d
    if c.in_channels != 2 * latent + 1 or not same:
        raise ValueError(
            f"the inpainting U-Net must be the decoder's with {2 * latent + 1} input channels (latents ‖ masked picture latents ‖ "
            f"mask); it has {c.in_channels} input channels{'' if same else ' and another architecture'}"
        )


def _new_folder(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; converting writes a new model folder")


def convert_kandinsky(
    prior_dir: str | os.PathLike,
    decoder_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    inpaint_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> KandinskyConversion:
    """Write the model folder `out_dir` (new or empty) from a Kandinsky 2.2 prior folder and decoder folder (+ inpainting).

    `dtype`: store every network in this dtype (default: as stored, i.e. float32 and a float16 vision tower). The
    folder is written beside `out_dir` and renamed into place at the end: a failed conversion leaves nothing.
    One component is held at a time, so the peak memory is about the largest one (the vision tower in float32).
    """
    out_dir = Path(out_dir)
    _new_folder(out_dir)
    folders = {"prior": read_diffusers_folder(prior_dir, expect=PRIOR_PIPELINES),
               "decoder": read_diffusers_folder(decoder_dir, expect=DECODER_PIPELINES)}
    if exists(inpaint_dir):
        folders["inpaint"] = read_diffusers_folder(inpaint_dir, expect=INPAINT_PIPELINES)
    _check_folders(folders)
    prior_folder, decoder_folder = folders["prior"], folders["decoder"]
    tmp = temp_dir_beside(out_dir)
    try:
        vision, zero_embed = convert_vision_tower(prior_folder, dtype=dtype)
        save_component(vision, tmp / IMAGE_ENCODER)
        del vision
        clip = convert_text_tower(prior_folder, dtype=dtype)
        save_model(tmp, clip=clip, defaults=KANDINSKY_DEFAULTS, family="kandinsky")
        del clip
        save_model(tmp, prior=convert_prior(prior_folder, dtype=dtype))
        save_model(tmp, decoder=convert_decoder(decoder_folder, zero_embed, dtype=dtype))
        if "inpaint" in folders:
            save_component(convert_unet(folders["inpaint"], dtype=dtype, what="inpaint unet"), tmp / DECODER_INPAINT)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes = [
        f"converted {prior_folder.class_name} {prior_folder.path} and {decoder_folder.class_name} {decoder_folder.path} "
        "(safetensors only): CLIP ViT-bigG text and vision towers, prior, decoder U-Net and MoVQ",
        f"the zero-image embedding (the decoder's unconditional image embedding) was computed once and stored; the vision tower "
        f"is in {IMAGE_ENCODER}/ for commands that embed pictures",
        "sampling defaults are diffusers' call defaults: prior 25 steps, guidance 4; decoder 100 steps, guidance 4",
    ]
    if "inpaint" in folders:
        notes.append(f"the inpainting U-Net of {folders['inpaint'].path} is in {DECODER_INPAINT}/")
    return KandinskyConversion(out_dir, notes)


def add_inpaint_unet(model_dir: str | os.PathLike, inpaint_dir: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Give the converted Kandinsky model folder `model_dir` the inpainting U-Net of a KandinskyV22InpaintPipeline folder
    (`decoder_inpaint/`, written atomically beside the others), in `dtype` (default: as stored)."""
    from dalle2_core.checkpoint import read_index
    from dalle2_core.component import read_json

    model_dir = Path(model_dir)
    if read_index(model_dir).family != "kandinsky":
        raise ValueError(f"{model_dir} is not a Kandinsky model folder; the inpainting U-Net goes beside a Kandinsky decoder")
    folder = read_diffusers_folder(inpaint_dir, expect=INPAINT_PIPELINES)
    folder["unet"].weight_files()  # refuses pickles before anything is built
    decoder = kc.KandinskyDecoderConfig.from_dict(read_json(model_dir / "decoder" / "config.json", "the decoder's config")["config"])
    _check_inpaint(kc.unet_config(folder["unet"].config(), "inpaint unet (UNet2DConditionModel)"), decoder.unet)
    return save_component(convert_unet(folder, dtype=dtype, what="inpaint unet"), model_dir / DECODER_INPAINT)


__all__ = [
    "DECODER_INPAINT",
    "IMAGE_ENCODER",
    "KANDINSKY_DEFAULTS",
    "KandinskyConversion",
    "add_inpaint_unet",
    "convert_decoder",
    "convert_kandinsky",
    "convert_prior",
    "convert_text_tower",
    "convert_unet",
    "convert_vision_tower",
]
