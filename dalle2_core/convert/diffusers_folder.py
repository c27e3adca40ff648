"""A diffusers pipeline folder (the `DiffusionPipeline.save_pretrained` layout) read without diffusers.

    model_index.json        {"_class_name": "UnCLIPPipeline", "<component>": ["<library>", "<class>"], ...}
    <component>/config.json                    models (diffusers and transformers)
    <component>/scheduler_config.json          schedulers
    <component>/preprocessor_config.json       feature extractors / image processors
    <component>/tokenizer_config.json          tokenizers
    <component>/diffusion_pytorch_model[.<variant>].safetensors   diffusers weights (model[...] for transformers),
    <component>/...safetensors.index[.<variant>].json + shards     or sharded

Only safetensors are read. Pickled weights (`.bin`, `.pt`, ...) can run code when opened, so a
component that has nothing else is refused and its pickles are never opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dalle2_core.convert.materialize import SafetensorsWeights, WeightsError, few
from dalle2_core.helpers import exists

PIPELINE_INDEX = "model_index.json"
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' file stems
CONFIG_NAMES = ("config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class DiffusersFolderError(ValueError):
    """A diffusers folder or component that cannot be read; the message is one line."""


class PickleWeightsRefused(DiffusersFolderError):
    """A component whose weights exist only as pickles, which are never opened."""


def _read_json(path: Path, what: str) -> dict:
    from dalle2_core.component import read_json

    try:
        return read_json(path, what)
    except (FileNotFoundError, ValueError) as err:
        raise DiffusersFolderError(str(err)) from None


def _variant_names(stem: str, variant: str | None) -> tuple[str, str]:
    """(single file, shard index) names, as diffusers and transformers write them."""
    if variant is None:
        return f"{stem}.safetensors", f"{stem}.safetensors.index.json"
    return f"{stem}.{variant}.safetensors", f"{stem}.safetensors.index.{variant}.json"


def _shards(index: Path, what: str) -> list[Path]:
    weight_map = _read_json(index, "a shard index {'weight_map': {tensor: file}}").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise DiffusersFolderError(f"{index} has no 'weight_map' of tensor names to shard files")
    files = sorted(set(weight_map.values()))
    bad = [f for f in files if not isinstance(f, str) or not f.endswith(".safetensors") or "/" in f or "\\" in f]
    if bad:
        raise DiffusersFolderError(f"{what}: shard index {index.name} names {bad[0]!r}; only .safetensors files beside it are read")
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise DiffusersFolderError(f"{what}: shard(s) {few(missing)} listed in {index.name} are missing")
    return [index.parent / f for f in files]


def _locate(directory: Path, variant: str | None, what: str) -> tuple[list[Path], Path | None]:
    """(weight files, shard index or None); refuses pickles-only folders and ambiguous ones."""
    found = []
    for stem in WEIGHT_NAMES:
        single, index = (directory / n for n in _variant_names(stem, variant))
        if single.is_file():
            found.append(([single], None))
        elif index.is_file():
            found.append((_shards(index, what), index))
    if len(found) > 1:
        raise DiffusersFolderError(f"{what} has two weight sets ({found[0][0][0].name}, {found[1][0][0].name}); expected one")
    if found:
        return found[0]
    present = sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    pickles = [n for n in present if n.endswith(PICKLE_SUFFIXES)]
    expected = " or ".join(_variant_names(stem, variant)[0] for stem in WEIGHT_NAMES)
    if pickles and not any(n.endswith(".safetensors") for n in present):
        raise PickleWeightsRefused(
            f"{what} has only pickled weights ({few(pickles)}); pickles are never opened (they can run code): "
            f"it needs {expected}"
        )
    wanted = f"{variant} variant " if exists(variant) else ""
    raise DiffusersFolderError(
        f"{what} has no {wanted}safetensors weights in {directory} (files: {few(present) if present else 'none'}); "
        f"expected {expected}, or a shard index beside its shards"
    )


def weight_files(directory: str | os.PathLike, variant: str | None = None, what: str | None = None) -> list[Path]:
    """The safetensors files holding the weights in `directory` (one file, or every shard of an index).

    Raises `PickleWeightsRefused` when there are only pickles, `DiffusersFolderError` when there are
    no weights, the wanted variant is absent, or two weight sets compete.
    """
    directory = Path(directory)
    return _locate(directory, variant, what or f"component {directory.name!r}")[0]


def open_weights(directory: str | os.PathLike, variant: str | None = None, what: str | None = None) -> SafetensorsWeights:
    """The weights in `directory` as one lazily read `SafetensorsWeights` (shards merged and checked
    against their index)."""
    directory = Path(directory)
    what = what or f"component {directory.name!r}"
    files, index = _locate(directory, variant, what)
    weights = SafetensorsWeights(files, what=what)
    if exists(index):
        listed, held = set(_read_json(index, "a shard index")["weight_map"]), set(weights.keys())
        if listed != held:
            weights.close()
            raise WeightsError(
                f"{what}: {index.name} lists {len(listed)} tensors but its shards hold {len(held)} (differ in {few(listed ^ held)})"
            )
    return weights


@dataclass(frozen=True)
class DiffusersComponent:
    """One entry of `model_index.json`: its folder and the library and class that wrote it."""

    name: str
    library: str | None
    class_name: str | None
    path: Path

    def config(self) -> dict:
        """The component's configuration (`config.json`, or a scheduler / processor / tokenizer config)."""
        for name in CONFIG_NAMES:
            if (self.path / name).is_file():
                return _read_json(self.path / name, f"the configuration of component {self.name!r}")
        raise DiffusersFolderError(
            f"component {self.name!r} has no configuration in {self.path}; expected one of {', '.join(CONFIG_NAMES)}"
        )

    def weight_files(self, variant: str | None = None) -> list[Path]:
        return weight_files(self.path, variant, f"component {self.name!r}")

    def open_weights(self, variant: str | None = None) -> SafetensorsWeights:
        return open_weights(self.path, variant, f"component {self.name!r}")


@dataclass(frozen=True)
class DiffusersFolder:
    """A pipeline folder: its class (`_class_name`) and its components by name."""

    path: Path
    class_name: str
    diffusers_version: str | None
    components: dict[str, DiffusersComponent]

    def __getitem__(self, name: str) -> DiffusersComponent:
        if name not in self.components:
            raise DiffusersFolderError(
                f"{self.class_name} folder {self.path} has no component {name!r}; it has: {', '.join(self.components)}"
            )
        return self.components[name]


def pipeline_class(folder: str | os.PathLike) -> str | None:
    """The `_class_name` of a diffusers pipeline folder, or None when `folder` is not one."""
    path = Path(folder) / PIPELINE_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    name = index.get("_class_name") if isinstance(index, dict) else None
    return name if isinstance(name, str) else None


def read_diffusers_folder(folder: str | os.PathLike, expect: str | tuple[str, ...] | None = None) -> DiffusersFolder:
    """Read `model_index.json` and locate every component; `expect` names the accepted pipeline classes."""
    folder = Path(folder)
    index = _read_json(folder / PIPELINE_INDEX, 'a diffusers pipeline index {"_class_name": ..., "<component>": [library, class]}')
    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise DiffusersFolderError(f"{folder / PIPELINE_INDEX} has no '_class_name': not a diffusers pipeline folder")
    accepted = (expect,) if isinstance(expect, str) else expect
    if exists(accepted) and class_name not in accepted:
        raise DiffusersFolderError(f"{folder} holds a {class_name}; expected {' or '.join(accepted)}")
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2):
            continue  # metadata and pipeline options, not components
        library, cls = entry
        if library is None and cls is None:
            continue  # a component the pipeline was saved without
        if not (folder / name).is_dir():
            raise DiffusersFolderError(
                f"{folder / PIPELINE_INDEX} lists component {name!r} ({library}.{cls}) but {folder / name} is missing"
            )
        components[name] = DiffusersComponent(name, library, cls, folder / name)
    version = index.get("_diffusers_version")
    return DiffusersFolder(folder, class_name, version if isinstance(version, str) else None, components)


__all__ = [
    "DiffusersComponent",
    "DiffusersFolder",
    "DiffusersFolderError",
    "PIPELINE_INDEX",
    "PickleWeightsRefused",
    "open_weights",
    "pipeline_class",
    "read_diffusers_folder",
    "weight_files",
]
