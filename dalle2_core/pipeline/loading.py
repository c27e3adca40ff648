"""A model folder to the pipeline of its family (`model_index.json` names the family)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from dalle2_core.checkpoint import ModelLoadError, load_model, read_index
from dalle2_core.pipeline.base import Pipeline


def _load_unclip(folder, *, device=None, dtype=None) -> Pipeline:
    from dalle2_core.pipeline.unclip import UnclipPipeline

    model = load_model(folder, device=device, dtype=dtype)
    if model.decoder is None:
        raise ModelLoadError(f"{folder} has no decoder, so it cannot make images")
    return UnclipPipeline(clip=model.clip, prior=model.prior, decoder=model.decoder, defaults=model.defaults).eval()


# family name -> loader(folder, *, device, dtype) -> Pipeline; a new architecture family registers here
PIPELINES: dict[str, Callable[..., Pipeline]] = {"unclip": _load_unclip}


def load_pipeline(folder: str | os.PathLike, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Pipeline:
    """The pipeline that samples the model folder `folder`, on `device` in `dtype` (eval mode)."""
    family = read_index(folder).family
    if family not in PIPELINES:
        raise ModelLoadError(f"{folder} is a {family!r} model; this build samples: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[family](folder, device=device, dtype=dtype)


__all__ = ["PIPELINES", "load_pipeline"]
