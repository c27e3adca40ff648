"""Convert LAION's public DALLE2-pytorch 1.0-1.1 prior, decoder and upsampler into a model folder.

The files are pickles read without running code (`safe_load`); their configs become this
project's configs with the 1.1.0 numerics switched on (`laion_config`); their weights are renamed,
reshaped and checked key by key (`laion_keys`). Modules are built on the meta device and take the
file's tensors as they are (`assign=True`), so a 957M-parameter decoder is neither initialised nor
copied. The result is a model folder (`checkpoint.save_model`) whose CLIP is OpenAI ViT-L/14 from
open_clip's cache, with LAION's inference defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dalle2_core.checkpoint import SamplingSettings, save_model
from dalle2_core.clip.open_clip_adapter import OpenClipConfig
from dalle2_core.component import read_json, write_json
from dalle2_core.convert.safe_load import load_checkpoint, version_string
from dalle2_core.decoder import Decoder, Unet
from dalle2_core.families.unclip.laion_config import (
    Notes,
    clip_name,
    decoder_options,
    decoder_section,
    image_sizes,
    prior_configs,
    stage_options,
    unet_config,
)
from dalle2_core.families.unclip.laion_keys import (
    check_schedule,
    check_state,
    prior_net_state,
    schedule_length,
    split_prefix,
    unet_state,
)
from dalle2_core.helpers import default, exists
from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork

FILE_KEYS = ("prior", "prior_config", "decoder", "upsampler", "upsampler_config")
NOTES_FILE = "conversion.json"
# LAION's inference defaults (guidance 1.7 on the base decoder, 2 prior candidates, prior guidance a
# no-op); steps are respaced ancestral sampling: 64 for the prior as published, 100 for the base
# decoder, 50 for the upsampler (LAION's own inference setting for it)
DEFAULT_COND_SCALE = (1.7, 1.0)
DEFAULT_STEPS = (100, 50)
DEFAULT_PRIOR_STEPS = 64


@dataclass(frozen=True)
class LaionConversion:
    """Where the converted model folder is, and what the conversion noted."""

    path: Path
    notes: tuple[str, ...]


def _state_dict(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a LAION file: a bare state dict, or the one under 'model'."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a {what} checkpoint: expected a state dict of tensors (bare or under 'model')")
    return dict(obj)


def _float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Half-precision files are widened; float32 tensors are used as they are (no copy)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _tuple_if_list(value):
    return tuple(value) if isinstance(value, list) else value  # JSON ranges (lo, hi) as the config's tuples


def _meta_free(module: nn.Module, what: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: {len(left)} tensors were not filled from the file, e.g. {left[0]}")


# ---- prior -------------------------------------------------------------------------------------------


def prior_weights(
    state: dict[str, torch.Tensor], net: DiffusionPriorNetwork, what: str = "prior network"
) -> dict[str, torch.Tensor]:
    """A 1.1.0 prior network state dict (`net.*` of the file, prefix removed) mapped and checked onto `net`."""
    rotary = net.causal_transformer.layers[0][0].rotary_emb
    mapped = prior_net_state(state, rotary.dim if exists(rotary) else 0, what)
    expected = net.state_dict()
    for key in ("null_text_embeds", "null_image_embed"):
        # guidance nulls of this project; 1.1.0 had none (its prior guidance was a no-op). Never read
        # here: the converted prior has cond_drop_prob 0 and image_cond_drop_prob 0
        if key in expected and key not in mapped:
            mapped[key] = torch.zeros(expected[key].shape, device=next(iter(state.values())).device)
    check_state(mapped, expected, what)
    return mapped


def convert_prior(
    prior_file: str | os.PathLike, prior_config_file: str | os.PathLike, notes: Notes | None = None
) -> DiffusionPrior:
    """A LAION prior (`prior/latest.pth` + `prior/prior_config.json`) as a `DiffusionPrior` (no CLIP)."""
    notes = default(notes, Notes)
    prior_file = Path(prior_file)
    config = prior_configs(read_json(prior_config_file, "a LAION prior config"), notes)
    state = _state_dict(load_checkpoint(prior_file), prior_file, "prior")
    stray = sorted({k.split(".")[0] for k in state} - {"net", "noise_scheduler", "clip"})
    if stray:
        raise ValueError(
            f"{prior_file} has keys under {', '.join(stray)}; a DiffusionPrior has net., noise_scheduler. (and clip.)"
        )
    clip_keys = sum(k.startswith("clip.") for k in state)
    if clip_keys:
        notes.add(f"prior: {clip_keys} CLIP tensors in the file left out (the CLIP comes from open_clip's cache)")

    with torch.device("meta"):
        net = DiffusionPriorNetwork(config.net)
    mapped = prior_weights(split_prefix(state, "net."), net, f"prior network ({prior_file.name})")
    net.load_state_dict(_float32(mapped), strict=True, assign=True)
    prior = DiffusionPrior(net, config=config)
    check_schedule(split_prefix(state, "noise_scheduler."), prior.diffusion, f"prior ({prior_file.name})")
    _meta_free(prior, "prior")
    return prior.eval()


# ---- decoder -----------------------------------------------------------------------------------------


@dataclass
class _Stage:
    """One unet of the converted cascade and where it comes from."""

    config: dict  # the source file's decoder section
    options: dict  # its decoder-level options, 1.1.0 defaults filled in
    index: int  # the unet's index in its source decoder
    state: dict[str, torch.Tensor]  # the whole source state dict
    size: int  # output resolution
    name: str


def _build_unet(stage: _Stage, notes: Notes) -> tuple[Unet, dict]:
    n = len(stage.config["unets"])
    opts = stage_options(stage.options, stage.index, n)
    what = f"{stage.name} unet {stage.index + 1}"
    config = unet_config(stage.config["unets"][stage.index], index=stage.index, stage=opts,
                         unconditional=stage.options["unconditional"], what=what, notes=notes)
    with torch.device("meta"):
        unet = Unet(config)
    source = split_prefix(stage.state, f"unets.{stage.index}.")
    if not source:
        found = sorted({".".join(k.split(".")[:2]) for k in stage.state if k.startswith("unets.")})
        raise ValueError(f"{what}: the file has no unets.{stage.index}.* weights; found {found or 'none'}")
    mapped = unet_state(source, unet.state_dict(), what=what)
    unet.load_state_dict(_float32(mapped), strict=True, assign=True)
    return unet, opts


def _stage_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    allowed = {"unets", "noise_schedulers", "lowres_conds", "clip", "vaes"}
    stray = sorted({k.split(".")[0] for k in state} - allowed)
    if stray:
        raise ValueError(
            f"{path} has keys under {', '.join(stray)}; a Decoder has unets., noise_schedulers., lowres_conds."
        )
    if any(k.startswith("vaes.") for k in state):
        raise ValueError(f"{path} holds VQ-GAN weights (vaes.*); latent decoders are not supported by this importer")
    return state


def _base_stage(decoder_file: Path, notes: Notes) -> _Stage:
    """The first unet of LAION's decoder file (its train config is inside the file)."""
    obj = load_checkpoint(decoder_file)
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        raise ValueError(
            f"{decoder_file} is not a LAION decoder file: expected {{'version', 'config', 'model'}} with the train config"
        )
    version = version_string(obj.get("version"))
    if exists(version) and not version.startswith(("0.", "1.0", "1.1.")):
        notes.add(f"decoder file written by DALLE2-pytorch {version}; converted with the 1.1.0 numerics")
    base = decoder_section(obj["config"], f"decoder config inside {decoder_file.name}")
    base_opts = decoder_options(base, f"decoder config inside {decoder_file.name}")
    base_state = _stage_state(_state_dict(obj, decoder_file, "decoder"), decoder_file)
    if len(base["unets"]) > 1:
        notes.add(f"{decoder_file.name}: only its first unet is used ({len(base['unets'])} in its config)")
    return _Stage(base, base_opts, 0, base_state, image_sizes(base)[0], decoder_file.name)


def _upsampler_stage(upsampler_file: Path, config_file, base: _Stage, timesteps: int, notes: Notes) -> _Stage:
    """The last unet of LAION's upsampler cascade, checked to fit after `base`."""
    up = decoder_section(read_json(config_file, "a LAION upsampler config"), "upsampler config")
    up_opts = decoder_options(up, "upsampler config")
    up_sizes, index = image_sizes(up), len(up["unets"]) - 1
    if index < 1 or len(up_sizes) != len(up["unets"]):
        raise ValueError(
            f"upsampler config has {len(up['unets'])} unet(s) for image_sizes {list(up_sizes)}; expected a cascade of 2+"
        )
    if up_sizes[index - 1] != base.size:
        raise ValueError(f"the upsampler takes {up_sizes[index - 1]} px images but the decoder makes {base.size} px")
    up_state = _stage_state(_state_dict(load_checkpoint(upsampler_file), upsampler_file, "upsampler"), upsampler_file)
    steps = schedule_length(split_prefix(up_state, f"noise_schedulers.{index}."))
    if exists(steps) and steps != timesteps:
        raise ValueError(f"the upsampler's noise schedule has {steps} steps but the decoder's has {timesteps}; they must match")
    if not exists(steps) and up_opts["timesteps"] != timesteps:
        notes.add(
            f"upsampler config says timesteps={up_opts['timesteps']} and its file has no schedule tables; "
            f"the decoder's {timesteps} are used, as LAION's loader does"
        )
    return _Stage(up, up_opts, index, up_state, up_sizes[index], upsampler_file.name)


def _cascade(stages: list[_Stage], timesteps: int, notes: Notes) -> Decoder:
    """The converted unets as one `Decoder`, with the options of their source configs."""
    unets, opts = zip(*(_build_unet(stage, notes) for stage in stages))
    base_opts = stages[0].options
    lowres = stages[-1].options  # low-res conditioning settings belong to the upsampler's config
    decoder = Decoder(
        unet=tuple(unets),
        image_sizes=tuple(s.size for s in stages),
        channels=base_opts["channels"],
        timesteps=timesteps,
        sample_timesteps=tuple(default(o["sample_timesteps"], DEFAULT_STEPS[min(i, 1)]) for i, o in enumerate(opts)),
        beta_schedule=tuple(o["beta_schedule"] for o in opts),
        loss_type=base_opts["loss_type"],
        predict_x_start=tuple(o["predict_x_start"] for o in opts),
        learned_variance=tuple(o["learned_variance"] for o in opts),
        learned_variance_constrain_frac=base_opts["learned_variance_constrain_frac"],
        vb_loss_weight=base_opts["vb_loss_weight"],
        p2_loss_weight_gamma=tuple(o["p2_loss_weight_gamma"] for o in opts),
        p2_loss_weight_k=base_opts["p2_loss_weight_k"],
        ddim_sampling_eta=base_opts["ddim_sampling_eta"],
        condition_on_text_encodings=any(u.cond_on_text_encodings for u in unets),
        unconditional=base_opts["unconditional"],
        image_cond_drop_prob=base_opts["image_cond_drop_prob"],
        text_cond_drop_prob=base_opts["text_cond_drop_prob"],
        clip_denoised=base_opts["clip_denoised"],
        dynamic_thresholding=base_opts["use_dynamic_thres"],  # 1.1.0 default: static clamp to [-1, 1]
        dynamic_thresholding_percentile=base_opts["dynamic_thres_percentile"],
        lowres_downsample_first=lowres["lowres_downsample_first"],
        use_blur_for_lowres_cond=tuple(o["use_blur_for_lowres_cond"] for o in opts),
        use_noise_for_lowres_cond=tuple(o["use_noise_for_lowres_cond"] for o in opts),
        blur_prob=lowres["blur_prob"],
        blur_sigma=_tuple_if_list(lowres["blur_sigma"]),
        blur_kernel_size=_tuple_if_list(lowres["blur_kernel_size"]),
        lowres_noise_sample_level=lowres["lowres_noise_sample_level"],
    )
    for i, (built, kept) in enumerate(zip(unets, decoder.unets)):
        if built is not kept:  # the decoder re-created a unet: its weights would be lost
            raise RuntimeError(f"unet {i + 1} was rebuilt by the Decoder: its converted config is not the cascade's")
    return decoder


def convert_decoder(
    decoder_file: str | os.PathLike,
    upsampler_file: str | os.PathLike | None = None,
    upsampler_config_file: str | os.PathLike | None = None,
    notes: Notes | None = None,
) -> Decoder:
    """LAION's 64 px decoder (`decoder/v1.0.2/latest.pth`, config inside), optionally with the 64 -> 256
    upsampler (`working/latest.pth` + `working/decoder_config.json`), as one cascaded `Decoder` (no CLIP)."""
    notes = default(notes, Notes)
    if exists(upsampler_file) != exists(upsampler_config_file):
        raise ValueError("the upsampler needs both its weights file and its decoder_config.json")
    stages = [_base_stage(Path(decoder_file), notes)]
    base_schedule = split_prefix(stages[0].state, "noise_schedulers.0.")
    timesteps = default(schedule_length(base_schedule), stages[0].options["timesteps"])
    if exists(upsampler_file):
        stages.append(_upsampler_stage(Path(upsampler_file), upsampler_config_file, stages[0], timesteps, notes))
    decoder = _cascade(stages, timesteps, notes)
    for i, stage in enumerate(stages):
        buffers = split_prefix(stage.state, f"noise_schedulers.{stage.index}.")
        check_schedule(buffers, decoder.diffusions[i], f"{stage.name} unet {stage.index + 1}")
    _meta_free(decoder, "decoder")
    return decoder.eval()


# ---- model folder ------------------------------------------------------------------------------------


def laion_defaults(decoder: Decoder, prior: DiffusionPrior) -> SamplingSettings:
    n = decoder.num_unets
    return SamplingSettings(
        cond_scale=DEFAULT_COND_SCALE[:n] if n > 1 else DEFAULT_COND_SCALE[0],
        prior_cond_scale=1.0,
        prior_samples=2,
        steps=tuple(decoder.config.per_unet(decoder.config.diffusion.sample_timesteps)),
        prior_steps=default(prior.config.sample_timesteps, DEFAULT_PRIOR_STEPS),
        sampler="ddpm",
    )


def convert_laion(files: dict, out_dir: str | os.PathLike, *, clip: nn.Module | None = None) -> LaionConversion:
    """Convert LAION's files into the model folder `out_dir` (new or empty).

    `files` maps `prior`, `prior_config`, `decoder` and optionally `upsampler` + `upsampler_config`
    to local paths. The CLIP is the one the prior config names (OpenAI ViT-L/14), stored as a name;
    pass `clip=` to store a given CLIP module instead.
    """
    files = {k: Path(v) for k, v in dict(files).items() if exists(v)}
    unknown = sorted(set(files) - set(FILE_KEYS))
    if unknown:
        raise ValueError(f"unknown LAION file key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(FILE_KEYS)}")
    missing = [k for k in ("prior", "prior_config", "decoder") if k not in files]
    if missing:
        raise ValueError(
            f"missing LAION file(s) {', '.join(missing)}; needed: prior, prior_config, decoder (+ upsampler, upsampler_config)"
        )
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {str(out)!r} is not empty; give a new or empty folder")

    notes = Notes()
    name, pretrained = clip_name(_section_of(read_json(files["prior_config"], "a LAION prior config"), "prior"))
    prior = convert_prior(files["prior"], files["prior_config"], notes)
    decoder = convert_decoder(files["decoder"], files.get("upsampler"), files.get("upsampler_config"), notes)
    # without clip=, the CLIP is stored as its open_clip name: its weights come from open_clip's cache
    save_model(out, clip=default(clip, OpenClipConfig(name, pretrained)), prior=prior, decoder=decoder,
               defaults=laion_defaults(decoder, prior))
    report = {
        "source": "LAION DALLE2-pytorch 1.0-1.1 checkpoints",
        "files": {k: {"name": p.name, "bytes": p.stat().st_size} for k, p in files.items()},
        "clip": {"name": name, "pretrained": pretrained} if not exists(clip) else type(clip).__name__,
        "notes": notes.lines,
    }
    write_json(out / NOTES_FILE, report)
    return LaionConversion(out, tuple(notes.lines))


def _section_of(config: dict, key: str) -> dict:
    section = config.get(key, config)
    return section if isinstance(section, dict) else {}


__all__ = ["LaionConversion", "convert_decoder", "convert_laion", "convert_prior", "laion_defaults", "prior_weights"]
