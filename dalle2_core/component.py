"""Component folders: one module's config (JSON) and weights (safetensors), and the helpers
model folders (`dalle2_core.checkpoint`) share with them.

    config.json         {"class": "Unet", "config": {...}}
    model.safetensors   the module's own tensors; a frozen CLIP inside it is not stored again

A component is rebuilt from its config alone (`cls.from_config(config, clip=...)`) and then filled
with its weights. Nothing here executes code from a file: configs are JSON and weights safetensors.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dalle2_core.atomic import atomic_path, fsync_dir, temp_dir_beside
from dalle2_core.convert.materialize import state_mismatch
from dalle2_core.helpers import exists
from dalle2_core.nn.inference import prefer_channels_last

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# class name -> modules that define it (the shared layers'; each family adds its own, `families.component_classes`);
# imported only when a checkpoint names the class, so loading a checkpoint never imports more than it needs and never
# instantiates an arbitrary class
_SHARED_CLASSES = {
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
    "AdmUnet": ("dalle2_core.adm",),
    "MoVQ": ("dalle2_core.movq",),
}


def _classes() -> dict[str, tuple[str, ...]]:
    """Every registered component class: the shared layers' and every family's."""
    from dalle2_core.families import component_classes

    return {**_SHARED_CLASSES, **{name: (module,) for name, module in component_classes().items()}}
# the top-level keys of a component's config.json
ENTRY_KEYS = ("class", "config")


class ModelLoadError(Exception):
    """A model folder or component that cannot be loaded; the message is one line."""


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


# --- class registry ---------------------------------------------------------------------------------


def _class_for(name: str) -> type[nn.Module]:
    classes = _classes()
    if name not in classes:
        raise ModelLoadError(f"unknown component class {name!r}; accepted: {', '.join(sorted(classes))}")
    for module_name in classes[name]:
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
    classes = _classes()
    if name not in classes:
        raise TypeError(f"cannot checkpoint a {name}; accepted classes: {', '.join(sorted(classes))}")
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
    (`convert.materialize`), so loading never holds the weights twice. In bfloat16 on the CPU its convolution weights are
    stored channels-last (`nn.prefer_channels_last`).
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
        module = module.to(device=device, dtype=dtype) if exists(device) or exists(dtype) else module
    else:
        module = _fill(module, directory / WEIGHTS_FILE, device=device, dtype=dtype)
    return prefer_channels_last(module, device, dtype)



__all__ = ["ModelLoadError", "load_component", "read_json", "save_component", "write_json"]
