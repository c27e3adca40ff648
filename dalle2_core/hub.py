"""Where a model comes from: a local folder, a Hugging Face Hub repo, a bundled model, or a family's preset.

`resolve_model(spec)` turns what a user typed into a local model folder (see `checkpoint.py`);
`pipeline.load_pipeline` then loads it. Downloads and the cache of converted models are `hub_files`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.choices import BUNDLED, DEFAULT_MODEL, PRESETS
from dalle2_core.convert.diffusers_folder import pipeline_class
from dalle2_core.families import diffusers_converter, preset_resolver
from dalle2_core.helpers import exists
from dalle2_core.hub_files import (
    OFFLINE_HINT,
    ModelNotFoundError,
    ResolvedModel,
    download_model_folder,
    download_pipeline,
    dream_cache_dir,
)

# a Hub repo id, optionally pinned: org/name or org/name@revision (branch, tag or commit)
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def default_model_spec() -> str:
    """`$DREAM_MODEL` if set, else the default model (`choices.DEFAULT_MODEL`)."""
    return os.environ.get("DREAM_MODEL") or DEFAULT_MODEL


def bundled_path(name: str) -> Path:
    return Path(__file__).parent / "bundled" / name


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """`("org/name", revision or None)` for a Hub repo id, None for anything else."""
    match = _HUB_ID.match(spec)
    return (match["repo"], match["revision"]) if match else None


def resolve_hub(repo_id: str, revision: str | None = None, *, progress: bool = False, cache_dir=None,
                pictures: bool = False, inpainting: bool = False) -> ResolvedModel:
    """A Hub repo holding a model folder, downloaded (or found) in the Hugging Face cache; a diffusers pipeline repo of a
    class a family reads is downloaded in full (safetensors only) and converted once (`pictures`, `inpainting`: see
    `resolve_model`)."""
    path = download_model_folder(repo_id, revision, progress, cache_dir)
    spec = repo_id + (f"@{revision}" if exists(revision) else "")
    name = pipeline_class(path)
    convert = diffusers_converter(name)
    if exists(convert):  # the whole pipeline (safetensors only), converted once by the family that reads it
        snapshot = download_pipeline(repo_id, revision, expect=(name,), progress=progress, cache_dir=cache_dir)
        return convert(snapshot.path, spec, revision=snapshot.revision, source="hub", pictures=pictures,
                       progress=progress, cache_dir=cache_dir, inpainting=inpainting)
    if not (path / INDEX_FILE).is_file():
        raise ModelNotFoundError(
            f"Hugging Face repo {spec!r} is not a dream model folder: it has no {INDEX_FILE} at its root"
        )
    # snapshot folders are named by commit: the exact weights used, whatever the branch says now
    return ResolvedModel(path=path, spec=spec, source="hub", revision=path.name, sources=(f"{repo_id}@{path.name}",))


def _looks_like_path(spec: str) -> bool:
    has_sep = any(exists(sep) and sep in spec for sep in (os.sep, os.altsep))
    return spec.startswith((".", "/", "~")) or (has_sep and not exists(parse_hub_id(spec)))


def resolve_model(spec: str | None = None, *, progress: bool = False, cache_dir=None, pictures: bool = False,
                  inpainting: bool = False) -> ResolvedModel:
    """A local model folder for `spec`: a bundled model, a preset, a folder path, or a Hub id org/name[@revision].

    The names are checked first: a local folder called `shapes` is reached as `./shapes`.
    `progress` lets huggingface_hub show download bars (off by default: the library never prints).
    `pictures`: the caller will embed pictures, so a model whose family fetches its vision tower on first use (Karlo)
    gets it now; text to image never needs it. `inpainting`: the caller will inpaint, so a model whose family fetches
    an inpainting network on first use (Kandinsky 2.2) gets it now. Presets and diffusers pipeline folders are
    resolved by the family that declares them (`dalle2_core.families`).
    """
    spec = default_model_spec() if spec is None else spec
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotFoundError(
            f"model {spec!r} is empty; expected a model folder, a Hugging Face repo id org/name[@revision], "
            f"or one of: {', '.join((*BUNDLED, *PRESETS))}"
        )
    spec = spec.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec):
        raise ModelNotFoundError(
            f"model {spec!r} is a URL; models are named by a folder path, a Hugging Face repo id "
            f"org/name[@revision], or one of: {', '.join((*BUNDLED, *PRESETS))}"
        )
    if spec in BUNDLED:
        path = bundled_path(spec)
        if not (path / INDEX_FILE).is_file():
            raise ModelNotFoundError(
                f"the bundled model {spec!r} is not included in this build ({path} has no {INDEX_FILE}); "
                "train a model and load its folder instead"
            )
        return ResolvedModel(path=path, spec=spec, source="bundled")
    if spec in PRESETS:
        return preset_resolver(spec)(progress=progress, cache_dir=cache_dir, pictures=pictures, inpainting=inpainting)
    local = Path(spec).expanduser()
    if local.exists() or _looks_like_path(spec):
        if not local.exists():
            raise ModelNotFoundError(f"model folder {str(local)!r} does not exist")
        convert = diffusers_converter(pipeline_class(local))
        if exists(convert):  # a diffusers pipeline folder a family reads: converted once
            return convert(local, spec, pictures=pictures, progress=progress, cache_dir=cache_dir, inpainting=inpainting)
        return ResolvedModel(path=local, spec=spec, source="local")
    hub = parse_hub_id(spec)
    if exists(hub):
        return resolve_hub(*hub, progress=progress, cache_dir=cache_dir, pictures=pictures, inpainting=inpainting)
    raise ModelNotFoundError(
        f"model {spec!r} not found: expected a model folder path, a Hugging Face repo id "
        f"org/name[@revision], or one of: {', '.join((*BUNDLED, *PRESETS))}"
    )


__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_HINT",
    "PRESETS",
    "ModelNotFoundError",
    "ResolvedModel",
    "bundled_path",
    "default_model_spec",
    "dream_cache_dir",
    "parse_hub_id",
    "resolve_hub",
    "resolve_model",
]
