"""Model folders: each component's config (JSON) plus its weights (safetensors), written atomically.

Layout (ARCHITECTURE.md "Checkpoints"):

    model_index.json         {"format": "dream-model", "version": 1, "components": [...], "defaults": {..., "fast": {...}}}
    clip/config.json         {"class": "CLIP", "config": {...}}
    clip/model.safetensors
    prior/...  decoder/...   same; the frozen CLIP inside them is not stored again

Each component folder is written and read by `dalle2_core.component`; this module owns the index,
the sampling defaults it records (with an optional "fast" entry: the settings a model recommends for
fewer network calls, as changes to its defaults) and the shared CLIP, stored once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from dalle2_core.choices import SPACINGS
from dalle2_core.component import (
    CONFIG_FILE,
    ModelLoadError,
    _clip_package,
    _dependency_prefixes,
    _describe,
    _read_json,
    load_component,
    one_line,
    save_component,
    write_json,
)
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import SAMPLERS as DIFFUSION_SAMPLERS
from dalle2_core.helpers import default, exists

FORMAT = "dream-model"
FORMAT_VERSION = 1
INDEX_FILE = "model_index.json"
COMPONENTS = ("clip", "prior", "decoder")
DEFAULT_FAMILY = "unclip"  # the architecture family a folder without a "family" entry belongs to
SAMPLERS = tuple(DIFFUSION_SAMPLERS)


@config_dataclass
class SamplingSettings(Config):
    """Sampling settings: in a model index the recommended ones (`None`: the module's own default),
    from a pipeline's `resolve` the concrete ones a run used."""

    cond_scale: float | tuple[float, ...] = 1.0  # decoder guidance, one value or one per unet
    prior_cond_scale: float = 1.0
    prior_samples: int = 2  # candidates drawn by the prior; the one closest to the text is kept
    steps: int | tuple[int, ...] | None = None  # per unet
    prior_steps: int | None = None
    sampler: str = "ddpm"
    spacing: str | None = None  # which timesteps the steps visit (`choices.SPACINGS`); None: each stage's own default
    size: tuple[int, int] | None = None  # (width, height) of the images, as "WxH" writes it; None: the model's own

    def __post_init__(self):
        for name, value in (("cond_scale", self.cond_scale), ("prior_cond_scale", self.prior_cond_scale)):
            if any(not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in _as_tuple(value)):
                raise ValueError(f"{name} {value!r} is invalid: guidance scales must be finite numbers >= 0")
        for name, value in (("steps", self.steps), ("prior_steps", self.prior_steps)):
            if exists(value) and any(not isinstance(v, int) or v < 1 for v in _as_tuple(value)):
                raise ValueError(f"{name} {value!r} is invalid: steps must be integers >= 1")
        if not isinstance(self.prior_samples, int) or self.prior_samples < 1:
            raise ValueError(f"prior_samples {self.prior_samples!r} is invalid: must be an integer >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is unknown; accepted: {', '.join(SAMPLERS)}")
        if exists(self.spacing) and self.spacing not in SPACINGS:
            raise ValueError(f"spacing {self.spacing!r} is unknown; accepted: {', '.join(SPACINGS)}")
        if exists(self.size) and (len(self.size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.size)):
            raise ValueError(f"size {self.size!r} is invalid: (width, height), two integers >= 1")


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


FAST = "fast"  # the entry of an index's "defaults" that holds the fast settings, as changes to the defaults


def _read_defaults(raw: dict) -> tuple[SamplingSettings, SamplingSettings | None]:
    """An index's "defaults" object: the defaults, and the fast settings (the defaults with its "fast" entry's changes)."""
    raw = dict(raw)
    changes = raw.pop(FAST, None)
    defaults = SamplingSettings.from_dict(raw)
    if changes is None:
        return defaults, None
    if not isinstance(changes, dict):
        raise ValueError(f"{FAST} {changes!r} is invalid: expected an object of sampling settings (e.g. {{\"steps\": 10}})")
    try:
        return defaults, SamplingSettings.from_dict({**defaults.to_dict(), **changes})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{FAST}: {err}") from None


def _fast_settings(fast: SamplingSettings | dict | None, stored: dict, defaults: SamplingSettings) -> SamplingSettings | None:
    """The fast settings `save_model` writes: `fast` as given (settings, or changes to `defaults`), else the changes a
    folder's stored "defaults" entry records, over `defaults` (an entry that does not fit is dropped, as invalid defaults are)."""
    if isinstance(fast, SamplingSettings):
        return fast
    if fast is None:
        with contextlib.suppress(TypeError, ValueError):
            return _fast_settings(stored[FAST], {}, defaults) if isinstance(stored.get(FAST), dict) else None
        return None
    if not isinstance(fast, dict):
        raise TypeError(f"fast must be a SamplingSettings or a dict of settings, got {type(fast).__name__}")
    return SamplingSettings.from_dict({**defaults.to_dict(), **fast})


def _defaults_entry(defaults: SamplingSettings, fast: SamplingSettings | None) -> dict:
    """The "defaults" object of an index: every default, and the fields where the fast settings differ from them."""
    entry = defaults.to_dict()
    if exists(fast):
        entry[FAST] = {k: v for k, v in fast.to_dict().items() if v != entry[k]}
    return entry


class ModelIndex(NamedTuple):
    """What `model_index.json` says: the components present, the sampling defaults, the architecture family and the
    fast settings (None when the index records none)."""

    components: list[str]
    defaults: SamplingSettings
    family: str = DEFAULT_FAMILY
    fast: SamplingSettings | None = None


@dataclass
class Model:
    """A loaded model folder: the shared CLIP, the prior, the decoder and the sampling defaults."""

    clip: nn.Module | None
    prior: nn.Module | None
    decoder: nn.Module | None
    defaults: SamplingSettings
    path: Path | None = None
    family: str = DEFAULT_FAMILY
    fast: SamplingSettings | None = None  # fewer network calls, as the index recommends (None: it records none)


# --- model folders ----------------------------------------------------------------------------------


def _shared_clip(clip, prior, decoder):
    """The CLIP to store once: the given one, else the one inside the prior or decoder.

    A project CLIP behind an `XClipAdapter` is stored bare; the prior and decoder wrap it again.
    """
    if not exists(clip):
        found = [
            module.get_submodule(prefix.rstrip("."))
            for module in (prior, decoder)
            if exists(module)
            for prefix in _dependency_prefixes(module)
        ]
        clip = found[0] if found else None
    if isinstance(clip, _clip_package().XClipAdapter):
        return clip.clip  # the adapter's project CLIP
    return clip


def _same_config(module: nn.Module, directory: Path) -> bool:
    try:
        stored = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    name, config = _describe(module)
    # through JSON, so tuples and lists compare equal
    return stored == json.loads(json.dumps({"class": name, "config": config}))


def save_model(
    folder: str | os.PathLike,
    *,
    clip: nn.Module | None = None,
    prior: nn.Module | None = None,
    decoder: nn.Module | None = None,
    defaults: SamplingSettings | dict | None = None,
    family: str | None = None,
    fast: SamplingSettings | dict | None = None,
) -> Path:
    """Write a model folder; components not given are kept from an existing folder.

    `defaults` (None: the folder's own, else the module defaults) are the recommended sampling settings; `fast`
    the ones recommended for fewer network calls, a `SamplingSettings` or a dict of changes to the defaults
    (None: the folder's own changes, if any).

    `family` names the family whose pipeline samples the folder (`dalle2_core.families`); None keeps
    the folder's own, else the default family.

    Without `clip=`, the CLIP inside the prior/decoder is written only if the folder has no CLIP
    with the same config yet (it is frozen there); pass `clip=` to overwrite it regardless.
    `clip=` may be an `OpenClipConfig` with a pretrained tag: the CLIP is then stored as that name
    without being built (nothing is downloaded).

    The index is written last, so an interrupted save leaves the previous index pointing at
    complete components.
    """
    folder = Path(folder)
    explicit_clip = exists(clip)
    clip = _shared_clip(clip, prior, decoder)
    if exists(clip) and not explicit_clip and _same_config(clip, folder / "clip"):
        clip = None  # the frozen CLIP inside a prior/decoder is already stored: don't rewrite it each save
    given = {"clip": clip, "prior": prior, "decoder": decoder}
    if not any(exists(m) for m in given.values()):
        raise ValueError("save_model needs at least one of clip=, prior=, decoder=")
    defaults = SamplingSettings.build(defaults) if exists(defaults) else None
    _fast_settings(fast, {}, default(defaults, SamplingSettings()))  # invalid fast settings fail before anything is written
    folder.mkdir(parents=True, exist_ok=True)

    index = {}
    if (folder / INDEX_FILE).is_file():
        with contextlib.suppress(ModelLoadError):
            index = _read_json(folder / INDEX_FILE, "a model index")
    for name, module in given.items():
        if exists(module):
            save_component(module, folder / name)
    write_json(folder / INDEX_FILE, _new_index(folder, index, [c for c in COMPONENTS if exists(given[c])], defaults, family, fast))
    return folder


def _new_index(folder: Path, index: dict, written: list[str], defaults: SamplingSettings | None, family: str | None,
               fast: SamplingSettings | dict | None) -> dict:
    """The index `save_model` writes: the components written and those the old `index` lists that are still there, and
    the defaults, family and fast settings given, else the old index's (else the module's)."""
    kept = [c for c in index.get("components", []) if c in COMPONENTS and (folder / c).is_dir()]
    components = [c for c in COMPONENTS if c in written or c in kept]
    stored = index.get("defaults") if isinstance(index.get("defaults"), dict) else {}
    if not exists(defaults):
        try:
            defaults = _read_defaults(stored)[0]
        except (TypeError, ValueError):
            defaults = SamplingSettings()
    return {"format": FORMAT, "version": FORMAT_VERSION, "family": family or index.get("family") or DEFAULT_FAMILY,
            "components": components, "defaults": _defaults_entry(defaults, _fast_settings(fast, stored, defaults))}


def read_index(folder: str | os.PathLike) -> ModelIndex:
    """The components, sampling defaults and family of a model folder, validated."""
    folder = Path(folder)
    expected = f"a model folder with {INDEX_FILE} and component folders ({', '.join(COMPONENTS)})"
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist; expected {expected}")
    if not folder.is_dir() or not (folder / INDEX_FILE).is_file():
        raise ModelLoadError(f"{folder} is not a model folder: expected {expected}")
    index = _read_json(folder / INDEX_FILE, f'{{"format": "{FORMAT}", "version": {FORMAT_VERSION}, ...}}')
    if index.get("format") != FORMAT:
        raise ModelLoadError(f"{folder / INDEX_FILE} has format {index.get('format')!r}; expected {FORMAT!r}")
    version = index.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ModelLoadError(
            f"{folder / INDEX_FILE} has version {version!r}; this build reads versions 1..{FORMAT_VERSION}"
        )
    components = index.get("components")
    if not isinstance(components, list) or not components or any(c not in COMPONENTS for c in components):
        raise ModelLoadError(
            f"{folder / INDEX_FILE} lists components {components!r}; expected a non-empty list of {COMPONENTS}"
        )
    try:
        defaults, fast = _read_defaults(index.get("defaults") or {})
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{folder / INDEX_FILE} has invalid defaults: {one_line(err)}") from None
    family = index.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or not family:
        raise ModelLoadError(f"{folder / INDEX_FILE} has family {family!r}; expected a family name such as {DEFAULT_FAMILY!r}")
    return ModelIndex(components, defaults, family, fast)


def load_model(
    folder: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """Load a model folder for sampling (modules in eval mode); the CLIP is loaded once and shared."""
    folder = Path(folder)
    components, defaults, family, fast = read_index(folder)
    loaded: dict[str, nn.Module | None] = dict.fromkeys(COMPONENTS)
    if "clip" in components:
        loaded["clip"] = load_component(folder / "clip", device=device, dtype=dtype)
    for name in ("prior", "decoder"):
        if name in components:
            loaded[name] = load_component(folder / name, device=device, dtype=dtype, clip=loaded["clip"])
    for module in loaded.values():
        if exists(module):
            module.eval()
    return Model(clip=loaded["clip"], prior=loaded["prior"], decoder=loaded["decoder"], defaults=defaults, path=folder,
                 family=family, fast=fast)


__all__ = [
    "Model",
    "ModelIndex",
    "ModelLoadError",
    "SamplingSettings",
    "load_component",
    "load_model",
    "read_index",
    "save_component",
    "save_model",
]
