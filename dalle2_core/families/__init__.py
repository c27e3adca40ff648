"""Model families: one folder each (`dalle2_core/families/<name>/`) behind the pipeline seam, one line in the registry.

A family's `__init__.py` declares a `Family`: its pipeline class, the components a model folder of it holds (in the
order they run, which is the order offloading moves them), the components loaded only on first use, the component
classes it adds to the checkpoint registry, its presets and the diffusers pipelines its converters read. Everything
is named by "module:attribute" strings and imported when first used, so declaring a family costs no import of torch,
and the generic code (loading, the class registry, presets, conversion) never imports a family by name.

The registry is `dalle2_core.choices.FAMILIES` (importable without torch: a command line lists presets at once).
Adding a family: its folder with a `FAMILY`, and one line there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from dalle2_core.choices import FAMILIES


@dataclass(frozen=True)
class Family:
    """What the generic code needs to know of a model family (see the module docstring)."""

    name: str
    pipeline: str  # "module:Class" of its `Pipeline` subclass
    components: tuple[str, ...]  # component folders text-to-image loads, in the order they run (and are offloaded)
    optional: tuple[str, ...] = ()  # of those, the ones a model folder may lack (a decoder without a prior)
    on_demand: tuple[str, ...] = ()  # component folders loaded on first use (a vision tower, an inpainting U-Net)
    classes: dict[str, str] = field(default_factory=dict)  # component class name -> module defining it
    presets: dict[str, str] = field(default_factory=dict)  # preset name -> "module:function" resolving it
    diffusers: dict[str, str] = field(default_factory=dict)  # diffusers pipeline class -> "module:function" converting once
    # diffusers pipeline class of the first folder given -> "module:function(folders, out, *, dtype, inpaint, image_variations)"
    # writing a model folder from the folders of one model
    converters: dict[str, str] = field(default_factory=dict)


def load_ref(ref: str):
    """The object a "module:attribute" string names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def family(name: str) -> Family:
    """The declared family `name` (a KeyError for a name not in the registry)."""
    if name not in FAMILIES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}").FAMILY


def families() -> list[Family]:
    return [family(name) for name in FAMILIES]


def preset_resolver(preset: str):
    """The function resolving a preset name (`choices.PRESETS`) to a model folder."""
    for fam in families():
        if preset in fam.presets:
            return load_ref(fam.presets[preset])
    raise KeyError(preset)


def diffusers_converter(pipeline_class: str | None):
    """The function converting a diffusers pipeline folder of this class once, or None when no family reads it."""
    for fam in families():
        if pipeline_class in fam.diffusers:
            return load_ref(fam.diffusers[pipeline_class])
    return None


def folders_converter(pipeline_class: str | None):
    """The function writing a model folder from diffusers folders whose first is of this class, or None when no family reads it."""
    for fam in families():
        if pipeline_class in fam.converters:
            return load_ref(fam.converters[pipeline_class])
    return None


def component_classes() -> dict[str, str]:
    """Component class name -> module, over every family (the checkpoint registry adds them to the shared ones)."""
    return {name: module for fam in families() for name, module in fam.classes.items()}


__all__ = ["Family", "component_classes", "diffusers_converter", "families", "family", "folders_converter", "load_ref", "preset_resolver"]
