"""Models that are converted once into the dream cache: the `karlo` preset and any diffusers UnCLIP pipeline.

`resolve_karlo()` downloads Kakao Brain's Karlo v1-alpha (safetensors and configs only, at the pinned commit
when one is set) together with the CLIP vision tower of its image-variations repo, and converts them once
(`convert.diffusers_unclip`) into `dream_cache_dir()/models/karlo`. `converted_unclip(folder)` does the same for
any UnCLIPPipeline folder (a fine-tune, a local copy), keyed by where it came from. The converted folder
records its sources in `source.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from dalle2_core.atomic import temp_dir_beside
from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.hub import (
    KARLO_IMAGE_VARIATIONS_REPO,
    KARLO_REPO,
    ResolvedModel,
    download_unclip,
    dream_cache_dir,
)

SOURCE_FILE = "source.json"


def _read_source(folder: Path) -> dict:
    try:
        data = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _convert_once(target: Path, source: dict, src: Path, image_variations: Path | None = None) -> Path:
    """`src` converted into `target` unless it already is; a half-converted folder is never visible there."""
    from dalle2_core.convert.diffusers_unclip import convert_unclip

    if (target / INDEX_FILE).is_file() and _read_source(target).get("key") == source["key"]:
        return target
    tmp = temp_dir_beside(target)
    try:
        result = convert_unclip(src, tmp, image_variations=image_variations)
        (tmp / SOURCE_FILE).write_text(json.dumps({**source, "notes": result.notes}, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_karlo(*, progress: bool = False, cache_dir=None) -> ResolvedModel:
    """Karlo v1-alpha (with the image-variations CLIP vision tower) as a dream model folder of the karlo family."""
    main = download_unclip(KARLO_REPO, progress=progress, cache_dir=cache_dir)
    vision = download_unclip(KARLO_IMAGE_VARIATIONS_REPO, components=("image_encoder", "feature_extractor"),
                             progress=progress, cache_dir=cache_dir)
    source = {"key": f"{main.revision}+{vision.revision}", "repo": KARLO_REPO, "commit": main.revision,
              "image_variations_repo": KARLO_IMAGE_VARIATIONS_REPO, "image_variations_commit": vision.revision}
    path = _convert_once(dream_cache_dir() / "models" / "karlo", source, main.path, vision.path)
    return ResolvedModel(path=path, spec="karlo", source="preset", revision=main.revision)


def converted_unclip(folder: Path, spec: str, revision: str | None = None, source: str = "local") -> ResolvedModel:
    """A diffusers UnCLIPPipeline folder converted once under `dream_cache_dir()/models/unclip/`.

    A Hub snapshot is keyed by repo and commit; a local folder by its absolute path and the modification
    times of its weights (so an edited fine-tune is converted again).
    """
    folder = Path(folder).resolve()
    if revision is not None:
        key = f"{spec.split('@')[0]}@{revision}"
    else:
        stamps = sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*.safetensors"))
        key = f"{folder}:{hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]}"
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = _convert_once(dream_cache_dir() / "models" / "unclip" / name, {"key": key, "source": str(folder)}, folder)
    return ResolvedModel(path=path, spec=spec, source=source, revision=revision)


__all__ = ["SOURCE_FILE", "converted_unclip", "resolve_karlo"]
