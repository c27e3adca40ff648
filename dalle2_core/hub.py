"""Where a model comes from: a local folder, a Hugging Face Hub repo, the bundled `shapes`, or `laion`.

`resolve_model(spec)` turns what a user typed into a local model folder (see `checkpoint.py`);
`checkpoint.load_model` then loads it. Downloads go through huggingface_hub, which owns the cache,
`HF_HUB_OFFLINE` and `HF_TOKEN`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.choices import BUNDLED, DEFAULT_MODEL, PRESETS
from dalle2_core.component import CONFIG_FILE, WEIGHTS_FILE, ModelLoadError, one_line
from dalle2_core.helpers import exists

# a Hub repo id, optionally pinned: org/name or org/name@revision (branch, tag or commit)
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_MODEL_FILES = [INDEX_FILE, f"*/{CONFIG_FILE}", f"*/{WEIGHTS_FILE}"]
# what to offer when nothing can be downloaded, in library terms (the CLI names its own option)
OFFLINE_HINT = f"the bundled model {BUNDLED[0]!r} needs no download"


class ModelNotFoundError(ModelLoadError):
    """The requested model cannot be found or downloaded; the message is one line.

    `offline` is True when the model is missing only because nothing can be downloaded: a caller
    can then point its user to the bundled model in its own terms. `pinned_repo` / `pinned_revision` name a
    pinned commit the Hub no longer serves (`pinned_file`: the file, when a single file was pinned): a caller can
    then say how to choose another revision in its own terms.
    """

    def __init__(self, message: str, *, offline: bool = False, pinned_repo: str | None = None,
                 pinned_revision: str | None = None, pinned_file: str | None = None):
        super().__init__(message)
        self.offline = offline
        self.pinned_repo, self.pinned_revision, self.pinned_file = pinned_repo, pinned_revision, pinned_file


@dataclass(frozen=True)
class ResolvedModel:
    """A local model folder and where it came from (recorded in generated images' metadata)."""

    path: Path
    spec: str  # what was asked for
    source: str  # "local" | "hub" | "bundled" | "preset"
    revision: str | None = None  # the Hub commit actually used
    sources: tuple[str, ...] = ()  # every Hub repo (or file) it was converted from, as "org/name@commit[:file]"


def default_model_spec() -> str:
    """`$DREAM_MODEL` if set, else the Karlo preset."""
    return os.environ.get("DREAM_MODEL") or DEFAULT_MODEL


def bundled_path(name: str) -> Path:
    return Path(__file__).parent / "bundled" / name


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """`("org/name", revision or None)` for a Hub repo id, None for anything else."""
    match = _HUB_ID.match(spec)
    return (match["repo"], match["revision"]) if match else None


def _offline() -> bool:
    """HF_HUB_OFFLINE is set, or the Hub cannot be reached at all (then only the local cache is used).

    The probe fails within seconds where huggingface_hub would retry with back-off for half a minute.
    """
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE) or not _hub_reachable(constants.ENDPOINT)


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> bool:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def _quiet_tqdm():
    from huggingface_hub.utils import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


def _hub_error(err: Exception, what: str, revision: str | None, *, pinned_repo: str | None = None,
               pinned_file: str | None = None) -> ModelNotFoundError:
    """One line for a huggingface_hub failure. `pinned_repo`: `revision` is a commit this library pins there."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, LocalEntryNotFoundError):
        return ModelNotFoundError(
            f"{what} is not in the local Hugging Face cache and cannot be downloaded "
            f"(offline: HF_HUB_OFFLINE is set or the Hub is unreachable); {OFFLINE_HINT}",
            offline=True,
        )
    if isinstance(err, GatedRepoError):
        return ModelNotFoundError(f"{what} is gated: accept its terms on huggingface.co and set HF_TOKEN")
    if isinstance(err, RevisionNotFoundError) and exists(pinned_repo):
        return ModelNotFoundError(
            f"{what} is pinned to commit {revision} of {pinned_repo!r}, which the Hugging Face Hub no longer serves",
            pinned_repo=pinned_repo, pinned_revision=revision, pinned_file=pinned_file,
        )
    if isinstance(err, RevisionNotFoundError):
        return ModelNotFoundError(f"revision {revision!r} of {what} does not exist (use a branch, tag or commit)")
    if isinstance(err, RepositoryNotFoundError):
        return ModelNotFoundError(f"{what} not found on the Hugging Face Hub (private? set HF_TOKEN)")
    return ModelNotFoundError(f"could not download {what}: {one_line(err)}")


def _snapshot(repo_id: str, revision: str | None, progress: bool, cache_dir) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=_MODEL_FILES,
            local_files_only=_offline(),
            tqdm_class=None if progress else _quiet_tqdm(),
            library_name="dream-dalle2",
        )
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise _hub_error(err, f"Hugging Face repo {repo_id!r}", revision) from None
    return Path(path)


def resolve_hub(repo_id: str, revision: str | None = None, *, progress: bool = False, cache_dir=None,
                pictures: bool = False) -> ResolvedModel:
    """A Hub repo holding a model folder, downloaded (or found) in the Hugging Face cache; a diffusers UnCLIP
    pipeline repo is downloaded in full (safetensors only) and converted once (`pictures`: see `resolve_model`)."""
    path = _snapshot(repo_id, revision, progress, cache_dir)
    spec = repo_id + (f"@{revision}" if exists(revision) else "")
    if exists(unclip_pipeline_class(path)):
        from dalle2_core.presets import converted_unclip

        snapshot = download_unclip(repo_id, revision, progress=progress, cache_dir=cache_dir)
        return converted_unclip(snapshot.path, spec, revision=snapshot.revision, source="hub", pictures=pictures,
                                progress=progress, cache_dir=cache_dir)
    if not (path / INDEX_FILE).is_file():
        raise ModelNotFoundError(
            f"Hugging Face repo {spec!r} is not a dream model folder: it has no {INDEX_FILE} at its root"
        )
    # snapshot folders are named by commit: the exact weights used, whatever the branch says now
    return ResolvedModel(path=path, spec=spec, source="hub", revision=path.name, sources=(f"{repo_id}@{path.name}",))


def dream_cache_dir() -> Path:
    """Where converted models are kept: `$DREAM_CACHE`, else `$XDG_CACHE_HOME/dream` or ~/.cache/dream."""
    if os.environ.get("DREAM_CACHE"):
        return Path(os.environ["DREAM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dream"


def _looks_like_path(spec: str) -> bool:
    has_sep = any(exists(sep) and sep in spec for sep in (os.sep, os.altsep))
    return spec.startswith((".", "/", "~")) or (has_sep and not exists(parse_hub_id(spec)))


def resolve_model(spec: str | None = None, *, progress: bool = False, cache_dir=None, pictures: bool = False) -> ResolvedModel:
    """A local model folder for `spec`: 'shapes', 'karlo', 'laion', a folder path, or a Hub id org/name[@revision].

    The names are checked first: a local folder called `shapes` is reached as `./shapes`.
    `progress` lets huggingface_hub show download bars (off by default: the library never prints).
    `pictures`: the caller will embed pictures, so a model converted from a diffusers UnCLIPPipeline (Karlo) gets
    its CLIP vision tower, fetched on first use (`presets.add_vision_tower`); text to image never needs it.
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
        from dalle2_core import presets

        if spec == "karlo":
            return presets.resolve_karlo(progress=progress, cache_dir=cache_dir, pictures=pictures)
        return presets.resolve_laion(progress=progress, cache_dir=cache_dir)
    local = Path(spec).expanduser()
    if local.exists() or _looks_like_path(spec):
        if not local.exists():
            raise ModelNotFoundError(f"model folder {str(local)!r} does not exist")
        if exists(unclip_pipeline_class(local)):  # a diffusers UnCLIP pipeline folder: converted once
            from dalle2_core.presets import converted_unclip

            return converted_unclip(local, spec, pictures=pictures, progress=progress, cache_dir=cache_dir)
        return ResolvedModel(path=local, spec=spec, source="local")
    hub = parse_hub_id(spec)
    if exists(hub):
        return resolve_hub(*hub, progress=progress, cache_dir=cache_dir, pictures=pictures)
    raise ModelNotFoundError(
        f"model {spec!r} not found: expected a model folder path, a Hugging Face repo id "
        f"org/name[@revision], or one of: {', '.join((*BUNDLED, *PRESETS))}"
    )


# --- diffusers UnCLIP pipelines (Karlo) ----------------------------------------------------------------

UNCLIP_PIPELINES = ("UnCLIPPipeline", "UnCLIPImageVariationPipeline")
# Karlo v1-alpha at the commit its main branch points to ("Update README for image variation (#9)"); its weights have
# not changed since the safetensors commit of 2022-12-19 (docs/karlo.md)
KARLO_REPO = "kakaobrain/karlo-v1-alpha"
KARLO_REVISION = "5ee45298e0956749e621bcb30c799a0b599afa83"
UNCLIP_REVISIONS = {KARLO_REPO: KARLO_REVISION}
# Karlo's image encoder is OpenAI's CLIP ViT-L/14 vision tower. kakaobrain/karlo-v1-alpha-image-variations holds it
# as .bin pickles only; OpenAI's own repo holds it as safetensors (both towers, transformers' names), at this commit
VISION_TOWER_REPO = "openai/clip-vit-large-patch14"
VISION_TOWER_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"
VISION_TOWER_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
# weights that are pickles (they can run code when opened) or for other frameworks: never fetched
NEVER_DOWNLOADED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.msgpack", "*.h5", "*.onnx"]


def unclip_file_patterns(variant: str | None = None, components: tuple[str, ...] | None = None) -> tuple[list[str], list[str]]:
    """(allow_patterns, ignore_patterns) for `snapshot_download` of a diffusers UnCLIP pipeline repo.

    Allowed: every JSON file (model_index.json, component / scheduler / preprocessor / tokenizer configs,
    shard indices, the tokenizer's vocab.json), the tokenizer's merges.txt, and the safetensors weights
    of `variant` (e.g. "fp16": `model.fp16.safetensors`) or, without one, the plain weights only — of every
    component, or only of `components`. Ignored whatever the patterns: `NEVER_DOWNLOADED`.
    """
    from dalle2_core.convert.diffusers_folder import WEIGHT_NAMES

    tag = f".{variant}" if exists(variant) else ""
    folders = components if exists(components) else ("*",)
    weights = [f"{c}/{stem}{tag}{shard}.safetensors" for c in folders for stem in WEIGHT_NAMES for shard in ("", "-*-of-*")]
    return ["*.json", "*/merges.txt", *weights], list(NEVER_DOWNLOADED)


def unclip_pipeline_class(folder: str | os.PathLike) -> str | None:
    """`UnCLIPPipeline` / `UnCLIPImageVariationPipeline` when `folder` is such a diffusers folder, else None."""
    from dalle2_core.convert.diffusers_folder import pipeline_class

    name = pipeline_class(folder)
    return name if name in UNCLIP_PIPELINES else None


def hub_pipeline_class(repo_id: str, revision: str | None = None, *, cache_dir=None) -> str | None:
    """The `_class_name` of a Hub repo's model_index.json (only that file is fetched); None without one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from dalle2_core.convert.diffusers_folder import PIPELINE_INDEX, pipeline_class

    try:
        index = hf_hub_download(
            repo_id, PIPELINE_INDEX, revision=revision, cache_dir=cache_dir, local_files_only=_offline(),
            library_name="dream-dalle2",
        )
    except LocalEntryNotFoundError as err:
        raise _hub_error(err, f"{PIPELINE_INDEX} of Hugging Face repo {repo_id!r}", revision) from None
    except EntryNotFoundError:
        return None
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise _hub_error(err, f"Hugging Face repo {repo_id!r}", revision) from None
    return pipeline_class(Path(index).parent)


def download_unclip(
    repo_id: str = KARLO_REPO,
    revision: str | None = None,
    *,
    variant: str | None = None,
    components: tuple[str, ...] | None = None,
    progress: bool = False,
    cache_dir=None,
) -> ResolvedModel:
    """A diffusers UnCLIP pipeline repo (Karlo's by default) from the Hugging Face cache, downloading what is
    missing: configs, tokenizer files and safetensors weights, never pickles (`unclip_file_patterns`).

    `revision` (branch, tag or commit) defaults to the repo's pin in `UNCLIP_REVISIONS`, else the default
    branch; `ResolvedModel.revision` is the commit used. A repo that is not an UnCLIP pipeline raises
    `ModelNotFoundError`.
    """
    from huggingface_hub import snapshot_download

    pinned = revision is None and exists(UNCLIP_REVISIONS.get(repo_id))
    revision = revision or UNCLIP_REVISIONS.get(repo_id)
    allow, ignore = unclip_file_patterns(variant, components)
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow, ignore_patterns=ignore,
                local_files_only=_offline(), tqdm_class=None if progress else _quiet_tqdm(), library_name="dream-dalle2",
            )
        )
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise _hub_error(err, f"Hugging Face repo {repo_id!r}", revision, pinned_repo=repo_id if pinned else None) from None
    spec = repo_id + (f"@{revision}" if exists(revision) else "")
    if not exists(unclip_pipeline_class(path)):
        from dalle2_core.convert.diffusers_folder import pipeline_class

        raise ModelNotFoundError(
            f"Hugging Face repo {spec!r} is not a diffusers UnCLIP pipeline: its {INDEX_FILE} names "
            f"{pipeline_class(path)!r}; expected {' or '.join(UNCLIP_PIPELINES)}"
        )
    return ResolvedModel(path=path, spec=spec, source="hub", revision=path.name, sources=(f"{repo_id}@{path.name}",))


def download_vision_tower(*, progress: bool = False, cache_dir=None) -> ResolvedModel:
    """OpenAI's CLIP ViT-L/14 (`VISION_TOWER_REPO` at its pinned commit) from the Hugging Face cache, downloading what
    is missing: its config, image-processor config and safetensors weights, nothing else."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(
            VISION_TOWER_REPO, revision=VISION_TOWER_REVISION, cache_dir=cache_dir, allow_patterns=VISION_TOWER_FILES,
            local_files_only=_offline(), tqdm_class=None if progress else _quiet_tqdm(), library_name="dream-dalle2",
        ))
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        what = f"the CLIP vision tower (Hugging Face repo {VISION_TOWER_REPO!r})"
        raise _hub_error(err, what, VISION_TOWER_REVISION, pinned_repo=VISION_TOWER_REPO) from None
    missing = [name for name in VISION_TOWER_FILES if not (path / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"Hugging Face repo {VISION_TOWER_REPO!r} at {path.name} lacks {', '.join(missing)}")
    spec = f"{VISION_TOWER_REPO}@{path.name}"
    return ResolvedModel(path=path, spec=spec, source="hub", revision=path.name, sources=(spec,))


__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "KARLO_REPO",
    "KARLO_REVISION",
    "VISION_TOWER_FILES",
    "VISION_TOWER_REPO",
    "VISION_TOWER_REVISION",
    "ModelNotFoundError",
    "ResolvedModel",
    "bundled_path",
    "default_model_spec",
    "download_unclip",
    "download_vision_tower",
    "dream_cache_dir",
    "hub_pipeline_class",
    "parse_hub_id",
    "resolve_hub",
    "resolve_model",
    "unclip_file_patterns",
    "unclip_pipeline_class",
]
