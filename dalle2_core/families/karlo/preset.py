"""Karlo models converted once into the dream cache: the `karlo` preset and any diffusers UnCLIP pipeline.

`resolve_karlo()` downloads Kakao Brain's Karlo v1-alpha at its pinned commit (safetensors, configs and tokenizer
files only) and converts it once (`families.karlo.convert`) into `dream_cache_dir()/models/karlo`, text tower only:
text to image needs nothing else. The CLIP vision tower, needed to embed pictures, is added on first use
(`add_vision_tower`): OpenAI's ViT-L/14 from `openai/clip-vit-large-patch14` at its pinned commit, as safetensors
(kakaobrain/karlo-v1-alpha-image-variations holds it as .bin pickles only). `converted_unclip(folder)` does the same for
any UnCLIPPipeline folder (a fine-tune, a local copy), keyed by where it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dalle2_core.hub_files import (
    SOURCE_FILE,
    ModelNotFoundError,
    ResolvedModel,
    convert_once,
    download_pipeline,
    dream_cache_dir,
    hub_error,
    offline,
    quiet_tqdm,
    read_source,
    write_json_file,
)

UNCLIP_PIPELINES = ("UnCLIPPipeline", "UnCLIPImageVariationPipeline")
# Karlo v1-alpha at the commit its main branch points to ("Update README for image variation (#9)"); its weights have
# not changed since the safetensors commit of 2022-12-19 (docs/karlo.md)
KARLO_REPO = "kakaobrain/karlo-v1-alpha"
KARLO_REVISION = "5ee45298e0956749e621bcb30c799a0b599afa83"
# Karlo's image encoder is OpenAI's CLIP ViT-L/14 vision tower. kakaobrain/karlo-v1-alpha-image-variations holds it
# as .bin pickles only; OpenAI's own repo holds it as safetensors (both towers, transformers' names), at this commit
VISION_TOWER_REPO = "openai/clip-vit-large-patch14"
VISION_TOWER_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"
VISION_TOWER_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]

def download_vision_tower(*, progress: bool = False, cache_dir=None) -> ResolvedModel:
    """OpenAI's CLIP ViT-L/14 (`VISION_TOWER_REPO` at its pinned commit) from the Hugging Face cache, downloading what
    is missing: its config, image-processor config and safetensors weights, nothing else."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(
            VISION_TOWER_REPO, revision=VISION_TOWER_REVISION, cache_dir=cache_dir, allow_patterns=VISION_TOWER_FILES,
            local_files_only=offline(), tqdm_class=None if progress else quiet_tqdm(), library_name="dream-dalle2",
        ))
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        what = f"the CLIP vision tower (Hugging Face repo {VISION_TOWER_REPO!r})"
        raise hub_error(err, what, VISION_TOWER_REVISION, pinned_repo=VISION_TOWER_REPO) from None
    missing = [name for name in VISION_TOWER_FILES if not (path / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"Hugging Face repo {VISION_TOWER_REPO!r} at {path.name} lacks {', '.join(missing)}")
    spec = f"{VISION_TOWER_REPO}@{path.name}"
    return ResolvedModel(path=path, spec=spec, source="hub", revision=path.name, sources=(spec,))


def add_vision_tower(target: Path, pipeline_folder: Path, *, progress: bool = False, cache_dir=None) -> str:
    """Give the converted Karlo-family folder `target` (from the UnCLIPPipeline folder `pipeline_folder`) the CLIP vision
    tower, once: OpenAI's ViT-L/14 at its pinned commit (`download_vision_tower`), stored beside the text tower.
    Returns its source, "org/name@commit"."""
    from dalle2_core.checkpoint import save_model
    from dalle2_core.convert.diffusers_folder import read_diffusers_folder
    from dalle2_core.families.karlo.convert import UNCLIP, convert_clip

    record = read_source(target)
    if isinstance(record.get("vision"), dict):
        return record["vision"]["source"]
    vision = download_vision_tower(progress=progress, cache_dir=cache_dir)
    clip = convert_clip(read_diffusers_folder(pipeline_folder, expect=UNCLIP), vision.path)
    save_model(target, clip=clip)  # swaps in the new clip/ component; prior and decoder stay as they are
    source = vision.sources[0]
    write_json_file(target / SOURCE_FILE, {**record, "vision": {"repo": VISION_TOWER_REPO, "commit": vision.revision, "source": source}})
    return source


def _sources(target: Path, *first: str) -> tuple[str, ...]:
    vision = read_source(target).get("vision")
    return (*first, vision["source"]) if isinstance(vision, dict) else tuple(first)


def _converter(src: Path):
    from dalle2_core.families.karlo.convert import convert_unclip

    return lambda out: convert_unclip(src, out)


def resolve_karlo(*, progress: bool = False, cache_dir=None, pictures: bool = False, inpainting: bool = False) -> ResolvedModel:
    """Karlo v1-alpha as a dream model folder of the karlo family; with `pictures`, with its CLIP vision tower (`inpainting`
    needs nothing more: RePaint on its decoder)."""
    main = download_pipeline(KARLO_REPO, pin=KARLO_REVISION, expect=UNCLIP_PIPELINES, progress=progress, cache_dir=cache_dir)
    source = {"key": main.sources[0], "repo": KARLO_REPO, "commit": main.revision}
    path = convert_once(dream_cache_dir() / "models" / "karlo", source, _converter(main.path))
    if pictures:
        add_vision_tower(path, main.path, progress=progress, cache_dir=cache_dir)
    return ResolvedModel(path=path, spec="karlo", source="preset", revision=main.revision, sources=_sources(path, main.sources[0]))


def converted_unclip(folder: Path, spec: str, revision: str | None = None, source: str = "local", *, pictures: bool = False,
                     progress: bool = False, cache_dir=None, inpainting: bool = False) -> ResolvedModel:
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
    path = convert_once(dream_cache_dir() / "models" / "unclip" / name, {"key": key, "source": str(folder)}, _converter(folder))
    if pictures and not (folder / "image_encoder").is_dir():
        add_vision_tower(path, folder, progress=progress, cache_dir=cache_dir)
    hub = (key,) if revision is not None else ()
    return ResolvedModel(path=path, spec=spec, source=source, revision=revision, sources=_sources(path, *hub))


__all__ = [
    "KARLO_REPO",
    "KARLO_REVISION",
    "UNCLIP_PIPELINES",
    "VISION_TOWER_REPO",
    "VISION_TOWER_REVISION",
    "add_vision_tower",
    "converted_unclip",
    "download_vision_tower",
    "resolve_karlo",
]
