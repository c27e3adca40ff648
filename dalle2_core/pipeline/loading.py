"""A model folder to the pipeline of its family (`model_index.json` names the family, `dalle2_core.families` declares it)."""

from __future__ import annotations

import os

import torch

from dalle2_core.checkpoint import ModelLoadError, read_index
from dalle2_core.choices import FAMILIES
from dalle2_core.families import family, load_ref
from dalle2_core.pipeline.base import Pipeline


def load_pipeline(folder: str | os.PathLike, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Pipeline:
    """The pipeline that samples the model folder `folder`, on `device` in `dtype` (eval mode)."""
    name = read_index(folder).family
    if name not in FAMILIES:
        raise ModelLoadError(f"{folder} is a {name!r} model; this build samples: {', '.join(sorted(FAMILIES))}")
    pipeline = load_ref(family(name).pipeline)
    return pipeline.from_folder(folder, device=device, dtype=dtype).eval()


__all__ = ["load_pipeline"]
