"""Model folders: each component's config (JSON) plus its weights (safetensors), written atomically.

Layout (ARCHITECTURE.md "Checkpoints"):

    model_index.json         {"format": "dream-model", "version": 1, "components": [...], "defaults": {...}}
    clip/config.json         {"class": "CLIP", "config": {...}}
    clip/model.safetensors
    prior/...  decoder/...   same; the frozen CLIP inside them is not stored again

A component is rebuilt from its config alone (`cls.from_config(config, clip=...)`) and then filled
with its weights. Nothing here executes code from a file: configs are JSON and weights safetensors.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

from dalle2_core.atomic import atomic_path, fsync_dir, temp_dir_beside
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import SAMPLERS as DIFFUSION_SAMPLERS
from dalle2_core.helpers import exists

FORMAT = "dream-model"
FORMAT_VERSION = 1
INDEX_FILE = "model_index.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
COMPONENTS = ("clip", "prior", "decoder")
DEFAULT_FAMILY = "unclip"  # the architecture family a folder without a "family" entry belongs to
SAMPLERS = tuple(DIFFUSION_SAMPLERS)

# class name -> module that defines it; imported only when a checkpoint names the class, so loading
# a checkpoint never imports more than it needs and never instantiates an arbitrary class
_CLASSES = {
    "CLIP": ("dalle2_core.clip",),
    "XClipAdapter": ("dalle2_core.clip",),
    "OpenClipAdapter": ("dalle2_core.clip",),
    "OpenAIClipAdapter": ("dalle2_core.clip",),
    "HFClipAdapter": ("dalle2_core.clip",),
    "DiffusionPriorNetwork": ("dalle2_core.prior",),
    "DiffusionPrior": ("dalle2_core.prior",),
    "Unet": ("dalle2_core.decoder",),
    "Decoder": ("dalle2_core.decoder", "dalle2_core.decoder.decoder"),
    "VQGanVAE": ("dalle2_core.vqgan",),
    "PriorTransformer": ("dalle2_core.prior",),
    "StandardizedPrior": ("dalle2_core.prior",),
    "TextProj": ("dalle2_core.adm",),
    "KarloCascade": ("dalle2_core.adm",),
}
# the top-level keys of a component's config.json
ENTRY_KEYS = ("class", "config")


class ModelLoadError(Exception):
    """A model folder or component that cannot be loaded; the message is one line."""


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


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


class ModelIndex(NamedTuple):
    """What `model_index.json` says: the components present, the sampling defaults, the architecture family."""

    components: list[str]
    defaults: SamplingSettings
    family: str = DEFAULT_FAMILY


@dataclass
class Model:
    """A loaded model folder: the shared CLIP, the prior, the decoder and the sampling defaults."""

    clip: nn.Module | None
    prior: nn.Module | None
    decoder: nn.Module | None
    defaults: SamplingSettings
    path: Path | None = None
    family: str = DEFAULT_FAMILY


def write_json(path: str | os.PathLike, data: dict) -> None:
    """`data` as indented JSON in `path`, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in `path`; else FileNotFoundError or ValueError, one line naming the file and `what`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; expected {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({one_line(err)}); expected {what}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}; expected {what}")
    return data


def _read_json(path: Path, what: str) -> dict:
    try:
        return read_json(path, what)
    except (FileNotFoundError, ValueError) as err:
        raise ModelLoadError(str(err)) from None


def few(keys, n: int = 3) -> str:
    """The first `n` of `keys` (sorted), and how many more there are: for one-line messages."""
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def state_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> str | None:
    """What keeps `state` (from `source`, e.g. "weights") from loading into a module whose state is `expected`:
    missing and unexpected keys and shape mismatches, in one line; None when it fits."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {few(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch ({source} vs config) {few(wrong)}")
    return "; ".join(problems) or None


# --- class registry ---------------------------------------------------------------------------------


def _class_for(name: str) -> type[nn.Module]:
    if name not in _CLASSES:
        raise ModelLoadError(f"unknown component class {name!r}; accepted: {', '.join(sorted(_CLASSES))}")
    for module_name in _CLASSES[name]:
        cls = getattr(importlib.import_module(module_name), name, None)
        if cls is not None:
            return cls
    raise ModelLoadError(f"component class {name!r} is not available in this build of dalle2_core")


def _clip_package():
    """`dalle2_core.clip`, imported when first needed: reading a checkpoint module imports no CLIP code."""
    return importlib.import_module("dalle2_core.clip")


def _is_external(component) -> bool:
    """An open_clip CLIP named by a pretrained tag: open_clip's cache has the weights, don't copy them.

    `component` is a module or an `OpenClipConfig` (an open_clip CLIP named without building it).
    """
    clip_lib = _clip_package()
    config = component.config if isinstance(component, clip_lib.OpenClipAdapter) else component
    if not isinstance(config, clip_lib.OpenClipConfig):
        return False
    return isinstance(config.pretrained, str) and not os.path.isfile(config.pretrained)


def _describe(component) -> tuple[str, dict]:
    """(class name, config dict) that rebuild `component` (a registered module, or an `OpenClipConfig`)."""
    clip_lib = _clip_package()
    if isinstance(component, clip_lib.OpenClipConfig):
        if not _is_external(component):
            raise TypeError(f"an OpenClipConfig stands for a CLIP only with a pretrained tag, got {component.pretrained!r}")
        return "OpenClipAdapter", component.to_dict()
    name = type(component).__name__
    if name not in _CLASSES:
        raise TypeError(f"cannot checkpoint a {name}; accepted classes: {', '.join(sorted(_CLASSES))}")
    config = component.config.to_dict()
    if isinstance(component, clip_lib.OpenClipAdapter) and not _is_external(component):
        config["pretrained"] = None  # a local weights file is stored as weights, not as a path of this machine
    return name, config


def _dependency_prefixes(module: nn.Module) -> list[str]:
    """State-dict prefixes of the shared CLIP inside `module` (topmost `CLIP` or `ClipAdapter` submodules)."""
    clip_lib = _clip_package()
    prefixes: list[str] = []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(p) for p in prefixes):
            continue
        if isinstance(sub, (clip_lib.CLIP, clip_lib.ClipAdapter)):
            prefixes.append(name + ".")
    return prefixes


def _own_state(module: nn.Module) -> dict[str, torch.Tensor]:
    prefixes = _dependency_prefixes(module)
    return {k: v for k, v in module.state_dict().items() if not any(k.startswith(p) for p in prefixes)}


# --- components -------------------------------------------------------------------------------------


def _write_component(component, directory: Path) -> None:
    name, config = _describe(component)
    write_json(directory / CONFIG_FILE, {"class": name, "config": config})
    if _is_external(component):
        return
    # no network here ties weights, so every tensor is stored under its own name
    tensors = {k: v.detach().cpu().contiguous() for k, v in _own_state(component).items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def save_component(module: nn.Module, directory: str | os.PathLike) -> Path:
    """Write `module` (config + weights, without its shared CLIP) as a component folder.

    `module` may also be an `OpenClipConfig` with a pretrained tag: a CLIP named without building
    it (its weights come from open_clip's cache when it is loaded).

    The folder is written beside the target and swapped in with renames, so a crash at any point
    leaves either the old or the new component complete (`load_component` recovers a swap that was
    cut between its two renames).
    """
    directory = Path(directory)
    tmp = temp_dir_beside(directory)
    try:
        _write_component(module, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(directory, old)
        os.rename(tmp, directory)
        fsync_dir(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, directory)
        fsync_dir(directory.parent)
    for stale in directory.parent.glob(f".{directory.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return directory


def _component_dir(directory: Path) -> Path:
    """`directory`, or the previous version left by a save cut between its two renames."""
    if directory.is_dir():
        return directory
    previous = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    previous = [p for p in previous if (p / CONFIG_FILE).is_file()]
    return previous[-1] if previous else directory


def one_line(err: BaseException) -> str:
    """An error's message on one line, at most 300 characters: for messages that quote another error."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _read_entry(directory: Path) -> tuple[str, dict]:
    """(class name, config) from a component's config.json, its layout checked."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory} is not a model component: expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    entry = _read_json(path, '{"class": ..., "config": {...}}')
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ModelLoadError(f"{path} has unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(ENTRY_KEYS)}")
    name, config = entry.get("class"), entry.get("config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ModelLoadError(f"{path} needs a string 'class' and an object 'config'")
    return name, config


def _externally_weighted(name: str, config: dict) -> bool:
    """A stored open_clip CLIP named by a pretrained tag: built by open_clip from its own cache, no weights file."""
    pretrained = config.get("pretrained")
    return name in ("OpenClipAdapter", "OpenAIClipAdapter") and isinstance(pretrained, str) and not os.path.isfile(pretrained)


def _open_weights(weights: Path):
    from dalle2_core.convert.materialize import SafetensorsWeights, WeightsError

    if not weights.is_file():
        raise ModelLoadError(f"{weights} is missing: the component has no weights")
    try:
        return SafetensorsWeights([weights], what=str(weights))
    except WeightsError as err:  # a bad header: truncated or not safetensors
        raise ModelLoadError(f"{weights} is corrupted or truncated ({one_line(err)}); re-save or re-download it") from None


def _fill(module: nn.Module, weights: Path, *, device, dtype) -> nn.Module:
    """`module` (built on meta, its shared CLIP real) filled from `weights` without a second copy of them."""
    from dalle2_core.convert.materialize import Keep, TensorDict, WeightsError, identity_key_map, materialize

    with _open_weights(weights) as source:
        # files of earlier versions stored tied tensors once, with their other names in "aliases"
        aliases = json.loads(source.metadata().get("aliases", "{}"))
        tensors = source
        if aliases:
            state = {k: source.get(k) for k in source.keys()}
            tensors = TensorDict({**state, **{a: state[o].clone() for a, o in aliases.items() if o in state}}, what=str(weights))
        own = _own_state(module)
        problem = state_mismatch({k: torch.empty(tensors.shape(k), device="meta") for k in tensors.keys()}, own, "weights")
        if exists(problem):
            raise ModelLoadError(f"{weights} does not match its {CONFIG_FILE}: {problem}")
        key_map = [*identity_key_map(own), *(Keep(k) for k in module.state_dict() if k not in own)]  # Keep: the shared CLIP
        try:
            return materialize(lambda: module, tensors, key_map, dtype=dtype, device=device, what=str(weights))
        except WeightsError as err:
            raise ModelLoadError(f"{weights} does not match its {CONFIG_FILE}: {one_line(err)}") from None
        except Exception as err:  # reading the data: safetensors reports truncation with several types
            raise ModelLoadError(f"{weights} is corrupted or truncated ({one_line(err)}); re-save or re-download it") from None


def _build_empty(build):
    """`build()` with its parameters on `meta`, or built for real where a constructor moves or reads them
    (open_clip's `create_model` does): its random values are then dropped when the weights are assigned."""
    from dalle2_core.convert.materialize import build_on_meta

    try:
        return build_on_meta(build)
    except NotImplementedError:  # "Cannot copy out of meta tensor"
        return build()


def load_component(
    directory: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **deps: Any,
) -> nn.Module:
    """Rebuild a component from its config and fill in its weights; `deps` (e.g. `clip=`) are passed on.

    The module is built with its parameters on `meta` and filled from the memory-mapped safetensors file
    (`convert.materialize`), so loading never holds the weights twice.
    """
    directory = _component_dir(Path(directory))
    name, config = _read_entry(directory)
    cls = _class_for(name)
    external = _externally_weighted(name, config)
    build = lambda: cls.from_config(config, **{k: v for k, v in deps.items() if exists(v)})  # noqa: E731
    try:
        module = build() if external else _build_empty(build)
    except (TypeError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{directory / CONFIG_FILE} is not a valid {name} config: {one_line(err)}") from None
    except _clip_package().ClipWeightsUnavailable as err:  # a pretrained CLIP that is not cached
        raise ModelLoadError(f"{directory}: {one_line(err)}") from None
    if external:
        return module.to(device=device, dtype=dtype) if exists(device) or exists(dtype) else module
    return _fill(module, directory / WEIGHTS_FILE, device=device, dtype=dtype)


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
) -> Path:
    """Write a model folder; components not given are kept from an existing folder.

    `family` names the pipeline that samples the folder (`dalle2_core.pipeline.PIPELINES`); None keeps
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
    folder.mkdir(parents=True, exist_ok=True)

    index = {}
    if (folder / INDEX_FILE).is_file():
        with contextlib.suppress(ModelLoadError):
            index = _read_json(folder / INDEX_FILE, "a model index")
    for name, module in given.items():
        if exists(module):
            save_component(module, folder / name)
    kept = [c for c in index.get("components", []) if c in COMPONENTS and (folder / c).is_dir()]
    components = [c for c in COMPONENTS if exists(given[c]) or c in kept]
    if not exists(defaults):
        try:
            defaults = SamplingSettings.from_dict(index.get("defaults") or {})
        except (TypeError, ValueError):
            defaults = SamplingSettings()
    family = family or index.get("family") or DEFAULT_FAMILY
    write_json(
        folder / INDEX_FILE,
        {"format": FORMAT, "version": FORMAT_VERSION, "family": family, "components": components, "defaults": defaults.to_dict()},
    )
    return folder


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
        defaults = SamplingSettings.from_dict(index.get("defaults") or {})
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{folder / INDEX_FILE} has invalid defaults: {one_line(err)}") from None
    family = index.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or not family:
        raise ModelLoadError(f"{folder / INDEX_FILE} has family {family!r}; expected a family name such as {DEFAULT_FAMILY!r}")
    return ModelIndex(components, defaults, family)


def load_model(
    folder: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """Load a model folder for sampling (modules in eval mode); the CLIP is loaded once and shared."""
    folder = Path(folder)
    components, defaults, family = read_index(folder)
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
                 family=family)


__all__ = [
    "Model",
    "ModelIndex",
    "ModelLoadError",
    "SamplingSettings",
    "atomic_path",
    "load_component",
    "load_model",
    "read_index",
    "save_component",
    "save_model",
]
