"""Kandinsky 2.2 converted once into the dream cache: the `kandinsky` preset, and pairs of diffusers folders.

`resolve_kandinsky()` downloads kandinsky-community/kandinsky-2-2-prior and -decoder at their pinned commits
(safetensors and JSON only: configs, tokenizer, scheduler; never pickles) and converts them once
(`families.kandinsky.convert`) into `dream_cache_dir()/models/kandinsky`. The vision tower is downloaded with the
prior (the zero-image embedding is computed from it at conversion) but loaded only when pictures are embedded. The
inpainting U-Net of -decoder-inpaint is downloaded and added on the first inpainting run (`inpainting=True`).
`source.json` in the converted folder records every repo and commit, and `ResolvedModel.sources` carries them into
the images' metadata.

A Kandinsky model is two diffusers folders, so a lone prior or decoder folder given as a model is refused with what
to do (`converted_kandinsky`); `convert_folders` converts a pair (fine-tunes included) into a model folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dalle2_core.families.kandinsky.convert import DECODER_PIPELINES, INPAINT_PIPELINES, PRIOR_PIPELINES
from dalle2_core.hub_files import (
    SOURCE_FILE,
    ModelNotFoundError,
    ResolvedModel,
    convert_once,
    download_pipeline,
    dream_cache_dir,
    read_source,
    write_json_file,
)

# The heads of main were not reachable from where these were chosen: the commits are the newest ones seen (docs/kandinsky.md)
PRIOR_REPO, PRIOR_REVISION = "kandinsky-community/kandinsky-2-2-prior", "9fc51ad5732afc5d031724219d22e6c42179c5a8"
DECODER_REPO, DECODER_REVISION = "kandinsky-community/kandinsky-2-2-decoder", "9ae140d347fed8ce6e8bb3005dcc1f48543bb8e3"
INPAINT_REPO, INPAINT_REVISION = "kandinsky-community/kandinsky-2-2-decoder-inpaint", "32646b9ac4bae7b64e7cbdb7be779fc4742f6a03"


class PairNeeded(ModelNotFoundError):
    """A prior or decoder folder alone, or a pinned commit the Hub no longer serves: a Kandinsky model is a prior and a
    decoder converted together (by whoever has the pair)."""

    diffusers_pair = True  # a caller can say how its user converts a pair


def _add_inpainting(target: Path, *, progress: bool, cache_dir) -> str:
    """Give the converted preset folder `target` the pinned inpainting U-Net, once; returns its source "org/name@commit"."""
    from dalle2_core.families.kandinsky.convert import add_inpaint_unet

    record = read_source(target)
    if isinstance(record.get("inpaint"), dict) and (target / "decoder_inpaint").is_dir():
        return record["inpaint"]["source"]
    inpaint = download_pipeline(INPAINT_REPO, pin=INPAINT_REVISION, expect=INPAINT_PIPELINES, components=("unet",), progress=progress,
                                cache_dir=cache_dir)
    add_inpaint_unet(target, inpaint.path)
    source = inpaint.sources[0]
    write_json_file(target / SOURCE_FILE, {**record, "inpaint": {"repo": INPAINT_REPO, "commit": inpaint.revision, "source": source}})
    return source


def resolve_kandinsky(*, progress: bool = False, cache_dir=None, pictures: bool = False, inpainting: bool = False) -> ResolvedModel:
    """Kandinsky 2.2 as a dream model folder of the kandinsky family (its vision tower is always there: `pictures` needs
    nothing more); with `inpainting`, with the inpainting U-Net of kandinsky-2-2-decoder-inpaint."""
    from dalle2_core.families.kandinsky.convert import convert_kandinsky

    try:
        prior = download_pipeline(PRIOR_REPO, pin=PRIOR_REVISION, expect=PRIOR_PIPELINES, progress=progress, cache_dir=cache_dir)
        decoder = download_pipeline(DECODER_REPO, pin=DECODER_REVISION, expect=DECODER_PIPELINES, components=("unet", "movq"),
                                    progress=progress, cache_dir=cache_dir)
    except ModelNotFoundError as err:
        if err.pinned_repo is None:
            raise
        # another commit of one repo is no Kandinsky preset: the pair is converted by whoever picks the commits
        raise PairNeeded(str(err), pinned_repo=err.pinned_repo, pinned_revision=err.pinned_revision) from None
    source = {"key": f"{prior.sources[0]}+{decoder.sources[0]}", "prior": {"repo": PRIOR_REPO, "commit": prior.revision},
              "decoder": {"repo": DECODER_REPO, "commit": decoder.revision}}
    path = convert_once(dream_cache_dir() / "models" / "kandinsky", source, lambda out: convert_kandinsky(prior.path, decoder.path, out))
    sources = (prior.sources[0], decoder.sources[0])
    if inpainting:
        sources += (_add_inpainting(path, progress=progress, cache_dir=cache_dir),)
    return ResolvedModel(path=path, spec="kandinsky", source="preset", sources=sources)


def converted_kandinsky(folder: Path, spec: str, revision: str | None = None, source: str = "local", **_options) -> ResolvedModel:
    """A Kandinsky prior or decoder pipeline folder named as a model: refused, since the model is both together."""
    from dalle2_core.convert.diffusers_folder import pipeline_class

    name = pipeline_class(folder)
    other = "KandinskyV22Pipeline (the decoder)" if name in PRIOR_PIPELINES else "KandinskyV22PriorPipeline (the prior)"
    raise PairNeeded(f"{spec!r} is a {name} folder, half of a Kandinsky 2.2 model: convert it together with its {other} folder "
                     "into one model folder and load that")


def convert_folders(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, dtype=None, inpaint: str | os.PathLike | None = None,
                    image_variations: str | os.PathLike | None = None):
    """A prior folder and a decoder folder (either order; `inpaint`: an inpainting pipeline folder) into the model folder
    `out` (`convert.convert_kandinsky`)."""
    from dalle2_core.convert.diffusers_folder import pipeline_class
    from dalle2_core.families.kandinsky.convert import convert_kandinsky

    if image_variations is not None:
        raise ValueError("a picture encoder folder applies to UnCLIPPipeline (Karlo) models; Kandinsky's prior folder holds its own")
    classes = [pipeline_class(Path(s)) for s in sources]
    priors = [s for s, c in zip(sources, classes) if c in PRIOR_PIPELINES]
    decoders = [s for s, c in zip(sources, classes) if c in DECODER_PIPELINES]
    if len(sources) != 2 or len(priors) != 1 or len(decoders) != 1:
        shown = ", ".join(str(c) for c in classes)
        raise ValueError(f"a Kandinsky 2.2 model is converted from its prior folder ({PRIOR_PIPELINES[0]}) and its decoder folder "
                         f"({' or '.join(DECODER_PIPELINES)}); got {len(sources)} folder(s): {shown}")
    return convert_kandinsky(priors[0], decoders[0], out, inpaint_dir=inpaint, dtype=dtype)


__all__ = [
    "DECODER_REPO", "DECODER_REVISION", "INPAINT_REPO", "INPAINT_REVISION", "PRIOR_REPO", "PRIOR_REVISION", "PairNeeded",
    "convert_folders", "converted_kandinsky", "resolve_kandinsky",
]
