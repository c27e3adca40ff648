"""A model folder to the pipeline of its family (`model_index.json` names the family)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from dalle2_core.checkpoint import ModelLoadError, load_model, read_index
from dalle2_core.pipeline.base import Pipeline


def _load_unclip(folder, *, device=None, dtype=None) -> Pipeline:
    from dalle2_core.pipeline.unclip import UnclipPipeline

    model = load_model(folder, device=device, dtype=dtype)
    if model.decoder is None:
        raise ModelLoadError(f"{folder} has no decoder, so it cannot make images")
    return UnclipPipeline(clip=model.clip, prior=model.prior, decoder=model.decoder, defaults=model.defaults).eval()


def _load_karlo(folder, *, device=None, dtype=None) -> Pipeline:
    from dalle2_core.checkpoint import load_component
    from dalle2_core.pipeline.karlo import KarloPipeline

    folder = Path(folder)
    index = read_index(folder)
    missing = [c for c in ("clip", "decoder") if c not in index.components]
    if missing:
        raise ModelLoadError(f"{folder} is a karlo model without {', '.join(missing)}; it needs clip, prior and decoder")
    load = lambda name: load_component(folder / name, device=device, dtype=dtype).eval()  # noqa: E731
    prior = load("prior") if "prior" in index.components else None
    return KarloPipeline(clip=load("clip"), prior=prior, decoder=load("decoder"), defaults=index.defaults).eval()


# family name -> loader(folder, *, device, dtype) -> Pipeline; a new architecture family registers here
PIPELINES: dict[str, Callable[..., Pipeline]] = {"unclip": _load_unclip, "karlo": _load_karlo}


def load_pipeline(folder: str | os.PathLike, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Pipeline:
    """The pipeline that samples the model folder `folder`, on `device` in `dtype` (eval mode)."""
    family = read_index(folder).family
    if family not in PIPELINES:
        raise ModelLoadError(f"{folder} is a {family!r} model; this build samples: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[family](folder, device=device, dtype=dtype)


__all__ = ["PIPELINES", "load_pipeline"]
