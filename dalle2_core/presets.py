"""Models that are converted once into the dream cache: the `karlo` and `laion` presets and any diffusers
UnCLIP pipeline.

`resolve_karlo()` downloads Kakao Brain's Karlo v1-alpha at its pinned commit (safetensors, configs and tokenizer
files only) and converts it once (`convert.diffusers_unclip`) into `dream_cache_dir()/models/karlo`, text tower
only: text to image needs nothing else. The CLIP vision tower, needed to embed pictures, is added on first use
(`add_vision_tower`): OpenAI's ViT-L/14 from `openai/clip-vit-large-patch14` at its pinned commit, as safetensors.
`converted_unclip(folder)` does the same for any UnCLIPPipeline folder (a fine-tune, a local copy), keyed by where
it came from. `resolve_laion()` downloads LAION's files at their pinned commits, checks their sha256 and converts them
once. A converted folder records its sources in `source.json`; the hashes and commits recorded at a file's first
download (where no pin is published) are kept in `dream_cache_dir()/hub-files.json` and checked on every later use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from dalle2_core.atomic import atomic_path, building_folder
from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.helpers import exists
from dalle2_core.hub import (
    KARLO_REPO,
    VISION_TOWER_REPO,
    ModelNotFoundError,
    ResolvedModel,
    _hub_error,
    _offline,
    _quiet_tqdm,
    download_unclip,
    download_vision_tower,
    dream_cache_dir,
)

SOURCE_FILE = "source.json"
HUB_FILES_NOTES = "hub-files.json"  # in dream_cache_dir(): what a file's first download found, where nothing is pinned


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_source(folder: Path) -> dict:
    return _read_json_object(folder / SOURCE_FILE)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _convert_once(target: Path, source: dict, src: Path) -> Path:
    """`src` converted into `target` unless it already is; a half-converted folder is never visible there."""
    from dalle2_core.convert.diffusers_unclip import convert_unclip

    if (target / INDEX_FILE).is_file() and _read_source(target).get("key") == source["key"]:
        return target
    with building_folder(target, replace=True) as tmp:  # also removes what a killed conversion left beside it
        result = convert_unclip(src, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({**source, "notes": result.notes}, indent=2) + "\n", encoding="utf-8")
    return target


def add_vision_tower(target: Path, pipeline_folder: Path, *, progress: bool = False, cache_dir=None) -> str:
    """Give the converted Karlo-family folder `target` (from the UnCLIPPipeline folder `pipeline_folder`) the CLIP vision
    tower, once: OpenAI's ViT-L/14 at its pinned commit (`hub.download_vision_tower`), stored beside the text tower.
    Returns its source, "org/name@commit"."""
    from dalle2_core.checkpoint import save_model
    from dalle2_core.convert.diffusers_folder import read_diffusers_folder
    from dalle2_core.convert.diffusers_unclip import UNCLIP, convert_clip

    record = _read_source(target)
    if isinstance(record.get("vision"), dict):
        return record["vision"]["source"]
    vision = download_vision_tower(progress=progress, cache_dir=cache_dir)
    clip = convert_clip(read_diffusers_folder(pipeline_folder, expect=UNCLIP), vision.path)
    save_model(target, clip=clip)  # swaps in the new clip/ component; prior and decoder stay as they are
    source = vision.sources[0]
    _write_json(target / SOURCE_FILE, {**record, "vision": {"repo": VISION_TOWER_REPO, "commit": vision.revision, "source": source}})
    return source


def _sources(target: Path, *first: str) -> tuple[str, ...]:
    vision = _read_source(target).get("vision")
    return (*first, vision["source"]) if isinstance(vision, dict) else tuple(first)


def resolve_karlo(*, progress: bool = False, cache_dir=None, pictures: bool = False) -> ResolvedModel:
    """Karlo v1-alpha as a dream model folder of the karlo family; with `pictures`, with its CLIP vision tower."""
    main = download_unclip(KARLO_REPO, progress=progress, cache_dir=cache_dir)
    source = {"key": main.sources[0], "repo": KARLO_REPO, "commit": main.revision}
    path = _convert_once(dream_cache_dir() / "models" / "karlo", source, main.path)
    if pictures:
        add_vision_tower(path, main.path, progress=progress, cache_dir=cache_dir)
    return ResolvedModel(path=path, spec="karlo", source="preset", revision=main.revision, sources=_sources(path, main.sources[0]))


def converted_unclip(folder: Path, spec: str, revision: str | None = None, source: str = "local", *, pictures: bool = False,
                     progress: bool = False, cache_dir=None) -> ResolvedModel:
    """A diffusers UnCLIPPipeline folder converted once under `dream_cache_dir()/models/unclip/` (with `pictures` and
    no image encoder of its own: with the pinned CLIP vision tower, `add_vision_tower`).

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
    if pictures and not (folder / "image_encoder").is_dir():
        add_vision_tower(path, folder, progress=progress, cache_dir=cache_dir)
    hub = (key,) if revision is not None else ()
    return ResolvedModel(path=path, spec=spec, source=source, revision=revision, sources=_sources(path, *hub))


class PinnedFile(NamedTuple):
    """A file of a Hub repo, at `revision` (a commit) and with the sha256 a conversion accepts (None: not pinned)."""

    repo: str
    filename: str
    revision: str | None = None
    sha256: str | None = None


# LAION's public weights (docs/laion.md). Their file names were overwritten in place many times in 2022 (the prior ~97
# times), so each is taken at a pinned commit. The prior's sha256 is the one the Hub published for that commit; the
# decoder's and the upsampler's were never published, and the upsampler's repo has no known pin: their commit and
# sha256 are recorded at the first download (`HUB_FILES_NOTES`) and every later use must match them.
LAION_REPO = "laion/DALLE2-PyTorch"
LAION_PRIOR_REVISION = "38741d4b25fc8313a9677b4a6f5a3c99d9cbcbcb"
LAION_DECODER_REVISION = "bab7ed655b7fd637b698d4e3c189e3d9bacce43d"
LAION_FILES = {
    "prior": PinnedFile(LAION_REPO, "prior/latest.pth", LAION_PRIOR_REVISION,
                        "99e749d800b337c361bef1d5dc000ac0ce69956a385e81df81029bcde0e007da"),
    "prior_config": PinnedFile(LAION_REPO, "prior/prior_config.json", LAION_PRIOR_REVISION),
    "decoder": PinnedFile(LAION_REPO, "decoder/v1.0.2/latest.pth", LAION_DECODER_REVISION),
    "upsampler": PinnedFile("Veldrovive/upsamplers", "working/latest.pth"),
    "upsampler_config": PinnedFile("Veldrovive/upsamplers", "working/decoder_config.json"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _snapshot_commit(path: Path, filename: str) -> str | None:
    parts = path.parts  # Hub snapshots are folders named by commit: snapshots/<commit>/<filename>
    return parts[-len(Path(filename).parts) - 1] if "snapshots" in parts else None


def _download_pinned(pin: PinnedFile, notes: dict, progress: bool, cache_dir) -> tuple[Path, dict]:
    """A pinned file from the Hub cache (downloaded if missing), checked against its pin or against what its first
    download recorded in `notes` (which a first download fills in), and what to record about it."""
    from huggingface_hub import hf_hub_download

    what = f"LAION file {pin.repo}/{pin.filename}"
    seen = notes.get(f"{pin.repo}:{pin.filename}") or {}
    revision = pin.revision or seen.get("commit")
    try:
        path = Path(hf_hub_download(pin.repo, pin.filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=_offline(), tqdm_class=None if progress else _quiet_tqdm(),
                                    library_name="dream-dalle2"))
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise _hub_error(err, what, revision, pinned_repo=pin.repo if exists(revision) else None, pinned_file=pin.filename) from None
    commit, digest = _snapshot_commit(path, pin.filename) or revision, _sha256(path)
    if exists(pin.sha256):
        expected, origin = pin.sha256, "pinned"
    else:  # a record of another commit (an older pin) says nothing about this one
        expected, origin = (seen.get("sha256") if seen.get("commit") == commit else None), "recorded at its first download"
    if exists(expected) and digest != expected:
        raise ModelNotFoundError(f"{what} at commit {commit} has sha256 {digest}, not the {origin} {expected}: it was replaced "
                                 "on the Hub or corrupted in the cache; nothing was converted (delete it from the Hugging Face "
                                 "cache to download it again)")
    notes[f"{pin.repo}:{pin.filename}"] = {"commit": commit, "sha256": digest}
    return path, {"repo": pin.repo, "file": pin.filename, "commit": commit, "sha256": digest, "pinned": exists(pin.sha256)}


def resolve_laion(*, progress: bool = False, cache_dir=None) -> ResolvedModel:
    """LAION's prior, decoder and upsampler, checked and converted once into `dream_cache_dir()/models/laion`."""
    from dalle2_core.convert.laion import convert_laion

    converted = dream_cache_dir() / "models" / "laion"
    key = [list(pin) for pin in LAION_FILES.values()]  # new pins in a new release convert again
    if not ((converted / INDEX_FILE).is_file() and _read_source(converted).get("key") == key):
        notes_file = dream_cache_dir() / HUB_FILES_NOTES
        notes = _read_json_object(notes_file)
        files, records = {}, {}
        for name, pin in LAION_FILES.items():
            files[name], records[name] = _download_pinned(pin, notes, progress, cache_dir)
        _write_json(notes_file, notes)  # every file checked: what the first downloads found is kept
        with building_folder(converted, replace=True) as tmp:  # a half-converted folder is never visible as `laion`
            convert_laion(files, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({"key": key, "files": records}, indent=2) + "\n", encoding="utf-8")
    files = _read_source(converted).get("files") or {}
    sources = tuple(f"{f['repo']}@{f['commit']}:{f['file']}" for f in files.values() if isinstance(f, dict))
    return ResolvedModel(path=converted, spec="laion", source="preset", revision=(files.get("decoder") or {}).get("commit"),
                         sources=sources)


__all__ = [
    "HUB_FILES_NOTES",
    "LAION_FILES",
    "SOURCE_FILE",
    "PinnedFile",
    "add_vision_tower",
    "converted_unclip",
    "resolve_karlo",
    "resolve_laion",
]
