"""Models that are converted once into the dream cache: the `karlo` and `laion` presets and any diffusers
UnCLIP pipeline.

`resolve_karlo()` downloads Kakao Brain's Karlo v1-alpha (safetensors and configs only, at the pinned commit
when one is set) together with the CLIP vision tower of its image-variations repo, and converts them once
(`convert.diffusers_unclip`) into `dream_cache_dir()/models/karlo`. `converted_unclip(folder)` does the same for
any UnCLIPPipeline folder (a fine-tune, a local copy), keyed by where it came from. The converted folder
records its sources in `source.json`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from dalle2_core.atomic import building_folder
from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.hub import (
    KARLO_IMAGE_VARIATIONS_REPO,
    KARLO_REPO,
    ModelNotFoundError,
    ResolvedModel,
    _hub_error,
    _offline,
    _quiet_tqdm,
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
    with building_folder(target, replace=True) as tmp:  # also removes what a killed conversion left beside it
        result = convert_unclip(src, tmp, image_variations=image_variations)
        (tmp / SOURCE_FILE).write_text(json.dumps({**source, "notes": result.notes}, indent=2) + "\n", encoding="utf-8")
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


class PinnedFile(NamedTuple):
    """A file of a Hub repo, at `revision` (a commit) and with the sha256 a conversion accepts (None: not pinned)."""

    repo: str
    filename: str
    revision: str | None = None
    sha256: str | None = None


# LAION's public weights (docs/laion.md). Their file names were overwritten in place many times in 2022, so a
# file is taken at its pinned commit and checked against its pinned sha256 before it is converted; where no
# pin is known (none could be read offline when this was written) the default branch is taken and the commit
# and hash found are recorded in the converted folder's source.json and the images' metadata.
LAION_FILES = {
    "prior": PinnedFile("laion/DALLE2-PyTorch", "prior/latest.pth"),
    "prior_config": PinnedFile("laion/DALLE2-PyTorch", "prior/prior_config.json"),
    "decoder": PinnedFile("laion/DALLE2-PyTorch", "decoder/v1.0.2/latest.pth"),
    "upsampler": PinnedFile("Veldrovive/upsamplers", "working/latest.pth"),
    "upsampler_config": PinnedFile("Veldrovive/upsamplers", "working/decoder_config.json"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_pinned(pin: PinnedFile, progress: bool, cache_dir) -> tuple[Path, dict]:
    """A pinned file from the Hub cache (downloaded if missing), checked, and what to record about it."""
    from huggingface_hub import hf_hub_download

    what = f"LAION file {pin.repo}/{pin.filename}"
    try:
        path = Path(hf_hub_download(pin.repo, pin.filename, revision=pin.revision, cache_dir=cache_dir,
                                    local_files_only=_offline(), tqdm_class=None if progress else _quiet_tqdm(),
                                    library_name="dream-dalle2"))
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise _hub_error(err, what, pin.revision) from None
    digest = _sha256(path)
    if pin.sha256 is not None and digest != pin.sha256:
        raise ModelNotFoundError(f"{what} has sha256 {digest[:16]}..., not the pinned {pin.sha256[:16]}...; it was "
                                 "replaced on the Hub or corrupted in the cache (delete it from the cache to download it again)")
    # Hub snapshots are folders named by commit: snapshots/<commit>/<filename>
    parts = path.parts
    commit = parts[-len(Path(pin.filename).parts) - 1] if "snapshots" in parts else None
    return path, {"repo": pin.repo, "file": pin.filename, "commit": commit, "sha256": digest, "pinned": pin.sha256 is not None}


def resolve_laion(*, progress: bool = False, cache_dir=None) -> ResolvedModel:
    """LAION's prior, decoder and upsampler, checked and converted once into `dream_cache_dir()/models/laion`."""
    from dalle2_core.convert.laion import convert_laion

    converted = dream_cache_dir() / "models" / "laion"
    if not (converted / INDEX_FILE).is_file():
        files, records = {}, {}
        for key, pin in LAION_FILES.items():
            files[key], records[key] = _download_pinned(pin, progress, cache_dir)
        with building_folder(converted, replace=True) as tmp:  # a half-converted folder is never visible as `laion`
            convert_laion(files, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({"files": records}, indent=2) + "\n", encoding="utf-8")
    decoder = (_read_source(converted).get("files") or {}).get("decoder") or {}
    return ResolvedModel(path=converted, spec="laion", source="preset", revision=decoder.get("commit"))


__all__ = ["LAION_FILES", "SOURCE_FILE", "PinnedFile", "converted_unclip", "resolve_karlo", "resolve_laion"]
