"""The `laion` preset: LAION's public DALLE2-pytorch weights, downloaded at pinned commits, checked and converted once.

Their file names were overwritten in place many times in 2022, so each file is taken at a pinned commit and
checked against its sha256 (`hub_files.download_pinned`); where no sha256 was published, the one its first
download found is recorded and every later use must match it (docs/laion.md).
"""

from __future__ import annotations

import json

from dalle2_core.atomic import building_folder
from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.hub_files import (
    HUB_FILES_NOTES,
    SOURCE_FILE,
    PinnedFile,
    ResolvedModel,
    download_pinned,
    dream_cache_dir,
    read_json_object,
    read_source,
    write_json_file,
)

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


def resolve_laion(*, progress: bool = False, cache_dir=None, pictures: bool = False, inpainting: bool = False) -> ResolvedModel:
    """LAION's prior, decoder and upsampler, checked and converted once into `dream_cache_dir()/models/laion` (`pictures`
    needs nothing more: its CLIP, open_clip's ViT-L/14, embeds text and pictures; nor does `inpainting`: RePaint)."""
    from dalle2_core.families.unclip.laion import convert_laion

    converted = dream_cache_dir() / "models" / "laion"
    key = [list(pin) for pin in LAION_FILES.values()]  # new pins in a new release convert again
    if not ((converted / INDEX_FILE).is_file() and read_source(converted).get("key") == key):
        notes_file = dream_cache_dir() / HUB_FILES_NOTES
        notes = read_json_object(notes_file)
        files, records = {}, {}
        for name, pin in LAION_FILES.items():
            files[name], records[name] = download_pinned(pin, notes, progress, cache_dir, label="LAION file")
        write_json_file(notes_file, notes)  # every file checked: what the first downloads found is kept
        with building_folder(converted, replace=True) as tmp:  # a half-converted folder is never visible as `laion`
            convert_laion(files, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({"key": key, "files": records}, indent=2) + "\n", encoding="utf-8")
    files = read_source(converted).get("files") or {}
    sources = tuple(f"{f['repo']}@{f['commit']}:{f['file']}" for f in files.values() if isinstance(f, dict))
    return ResolvedModel(path=converted, spec="laion", source="preset", revision=(files.get("decoder") or {}).get("commit"),
                         sources=sources)


__all__ = ["LAION_DECODER_REVISION", "LAION_FILES", "LAION_PRIOR_REVISION", "LAION_REPO", "resolve_laion"]
