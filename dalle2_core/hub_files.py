"""Downloads from the Hugging Face Hub and the dream cache of converted models.

huggingface_hub owns its cache, `HF_HUB_OFFLINE` and `HF_TOKEN`; this module maps its failures to one line
(`ModelNotFoundError`), fetches diffusers pipeline repos without pickles, fetches single files pinned to a commit
and a sha256 (or checked against what their first download recorded), and converts a download once into
`dream_cache_dir()`, recording its sources. Family presets (`dalle2_core.families.<name>.preset`) are built on it;
`dalle2_core.hub` resolves what a user typed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dalle2_core.atomic import atomic_path, building_folder
from dalle2_core.checkpoint import INDEX_FILE
from dalle2_core.choices import BUNDLED
from dalle2_core.component import CONFIG_FILE, WEIGHTS_FILE, ModelLoadError, one_line
from dalle2_core.helpers import exists

# what to offer when nothing can be downloaded, in library terms (the CLI names its own option)
OFFLINE_HINT = f"the bundled model {BUNDLED[0]!r} needs no download"
SOURCE_FILE = "source.json"  # in a converted folder: where it came from
HUB_FILES_NOTES = "hub-files.json"  # in dream_cache_dir(): what a file's first download found, where nothing is pinned
# weights that are pickles (they can run code when opened) or for other frameworks: never fetched
MODEL_FILES = [INDEX_FILE, f"*/{CONFIG_FILE}", f"*/{WEIGHTS_FILE}"]  # a dream model folder on the Hub
NEVER_DOWNLOADED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.msgpack", "*.h5", "*.onnx"]


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


def dream_cache_dir() -> Path:
    """Where converted models are kept: `$DREAM_CACHE`, else `$XDG_CACHE_HOME/dream` or ~/.cache/dream."""
    if os.environ.get("DREAM_CACHE"):
        return Path(os.environ["DREAM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dream"


def offline() -> bool:
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


def quiet_tqdm():
    from huggingface_hub.utils import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


def hub_error(err: Exception, what: str, revision: str | None, *, pinned_repo: str | None = None,
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


def download_model_folder(repo_id: str, revision: str | None, progress: bool, cache_dir) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=MODEL_FILES,
            local_files_only=offline(),
            tqdm_class=None if progress else quiet_tqdm(),
            library_name="dream-dalle2",
        )
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise hub_error(err, f"Hugging Face repo {repo_id!r}", revision) from None
    return Path(path)


def pipeline_file_patterns(variant: str | None = None, components: tuple[str, ...] | None = None) -> tuple[list[str], list[str]]:
    """(allow_patterns, ignore_patterns) for `snapshot_download` of a diffusers pipeline repo.

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


def hub_pipeline_class(repo_id: str, revision: str | None = None, *, cache_dir=None) -> str | None:
    """The `_class_name` of a Hub repo's model_index.json (only that file is fetched); None without one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from dalle2_core.convert.diffusers_folder import PIPELINE_INDEX, pipeline_class

    try:
        index = hf_hub_download(
            repo_id, PIPELINE_INDEX, revision=revision, cache_dir=cache_dir, local_files_only=offline(),
            library_name="dream-dalle2",
        )
    except LocalEntryNotFoundError as err:
        raise hub_error(err, f"{PIPELINE_INDEX} of Hugging Face repo {repo_id!r}", revision) from None
    except EntryNotFoundError:
        return None
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise hub_error(err, f"Hugging Face repo {repo_id!r}", revision) from None
    return pipeline_class(Path(index).parent)


def download_pipeline(
    repo_id: str,
    revision: str | None = None,
    *,
    expect: tuple[str, ...],
    pin: str | None = None,
    variant: str | None = None,
    components: tuple[str, ...] | None = None,
    progress: bool = False,
    cache_dir=None,
) -> ResolvedModel:
    """A diffusers pipeline repo whose model_index.json names one of `expect` from the Hugging Face cache, downloading
    what is missing: configs, tokenizer files and safetensors weights, never pickles (`pipeline_file_patterns`).

    `revision` (branch, tag or commit) defaults to `pin` (the commit a preset pins), else the default branch;
    `ResolvedModel.revision` is the commit used. A repo of another pipeline class raises `ModelNotFoundError`.
    """
    from huggingface_hub import snapshot_download

    pinned = revision is None and exists(pin)
    revision = revision or pin
    allow, ignore = pipeline_file_patterns(variant, components)
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow, ignore_patterns=ignore,
                local_files_only=offline(), tqdm_class=None if progress else quiet_tqdm(), library_name="dream-dalle2",
            )
        )
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise hub_error(err, f"Hugging Face repo {repo_id!r}", revision, pinned_repo=repo_id if pinned else None) from None
    spec = repo_id + (f"@{revision}" if exists(revision) else "")
    from dalle2_core.convert.diffusers_folder import pipeline_class

    if pipeline_class(path) not in expect:
        raise ModelNotFoundError(
            f"Hugging Face repo {spec!r} is not the diffusers pipeline expected: its {INDEX_FILE} names "
            f"{pipeline_class(path)!r}; expected {' or '.join(expect)}"
        )
    return ResolvedModel(path=path, spec=spec, source="hub", revision=path.name, sources=(f"{repo_id}@{path.name}",))


def read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_source(folder: Path) -> dict:
    return read_json_object(folder / SOURCE_FILE)


def write_json_file(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def convert_once(target: Path, source: dict, convert: Callable[[Path], object]) -> Path:
    """`convert(folder) -> result with .notes` run into `target` unless `target` was converted from `source["key"]`
    already; a half-converted folder is never visible there, and `source.json` records where it came from."""
    if (target / INDEX_FILE).is_file() and read_source(target).get("key") == source["key"]:
        return target
    with building_folder(target, replace=True) as tmp:  # also removes what a killed conversion left beside it
        result = convert(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({**source, "notes": result.notes}, indent=2) + "\n", encoding="utf-8")
    return target


class PinnedFile(NamedTuple):
    """A file of a Hub repo, at `revision` (a commit) and with the sha256 a conversion accepts (None: not pinned)."""

    repo: str
    filename: str
    revision: str | None = None
    sha256: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _snapshot_commit(path: Path, filename: str) -> str | None:
    parts = path.parts  # Hub snapshots are folders named by commit: snapshots/<commit>/<filename>
    return parts[-len(Path(filename).parts) - 1] if "snapshots" in parts else None


def download_pinned(pin: PinnedFile, notes: dict, progress: bool, cache_dir, label: str = "file") -> tuple[Path, dict]:
    """A pinned file from the Hub cache (downloaded if missing), checked against its pin or against what its first
    download recorded in `notes` (which a first download fills in), and what to record about it."""
    from huggingface_hub import hf_hub_download

    what = f"{label} {pin.repo}/{pin.filename}"
    seen = notes.get(f"{pin.repo}:{pin.filename}") or {}
    revision = pin.revision or seen.get("commit")
    try:
        path = Path(hf_hub_download(pin.repo, pin.filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=offline(), tqdm_class=None if progress else quiet_tqdm(),
                                    library_name="dream-dalle2"))
    except Exception as err:  # huggingface_hub raises many types, all mapped to one line
        raise hub_error(err, what, revision, pinned_repo=pin.repo if exists(revision) else None, pinned_file=pin.filename) from None
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


__all__ = [
    "HUB_FILES_NOTES",
    "NEVER_DOWNLOADED",
    "OFFLINE_HINT",
    "SOURCE_FILE",
    "ModelNotFoundError",
    "PinnedFile",
    "ResolvedModel",
    "convert_once",
    "download_pinned",
    "download_model_folder",
    "download_pipeline",
    "hub_error",
    "offline",
    "quiet_tqdm",
    "dream_cache_dir",
    "hub_pipeline_class",
    "pipeline_file_patterns",
    "read_json_object",
    "read_source",
    "write_json_file",
]
