"""A Hugging Face cache laid out as huggingface_hub lays it out, holding fixture files under real repo names and commits.

    models--{org}--{name}/blobs/{sha256 for LFS files, git blob sha1 for the others}
    models--{org}--{name}/snapshots/{commit}/{path} -> ../../blobs/...   (relative links)
    models--{org}--{name}/refs/main                                      (the commit main points to)
    models--{org}--{name}/trees/{commit}.json                            (the repo's file listing at that commit,
                                                                           written by huggingface_hub's own writer)

The listing names every file the repo holds, also those never downloaded (pickles, other frameworks' weights):
offline, huggingface_hub then refuses a snapshot that lacks a file the download patterns would have taken, so the
presets' patterns are checked as on a real cache. `check_cache` has huggingface_hub's `scan_cache_dir` confirm the
layout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hub"
KARLO_FIXTURE = FIXTURES / "kakaobrain--karlo-v1-alpha"  # the tiny Karlo UnCLIPPipeline diffusers 0.42 saved


def karlo_pipeline_folder(dest: Path) -> Path:
    """A copy of the diffusers-saved tiny Karlo pipeline folder at `dest` (tests edit or interrupt their copy)."""
    return Path(shutil.copytree(KARLO_FIXTURE, dest))


LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx")


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_repo(cache: Path, repo_id: str, commit: str, files: Path | dict[str, Path], *, listed: dict[str, int] | None = None,
               main: bool = True) -> Path:
    """`files` (a folder, or repo path -> file) as commit `commit` of `repo_id`; `listed`: further repo paths (with
    sizes) the repo holds at that commit but the cache lacks. Returns the snapshot folder."""
    if isinstance(files, Path):
        files = {p.relative_to(files).as_posix(): p for p in sorted(files.rglob("*")) if p.is_file()}
    storage = repo_folder(cache, repo_id)
    snapshot = storage / "snapshots" / commit
    tree = {}
    for rel, src in files.items():
        data = src.read_bytes()
        lfs = rel.endswith(LFS_SUFFIXES)
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data)
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        tree[rel] = {"size": len(data), "blob_id": _git_blob_sha1(data), **({"lfs_sha256": etag, "lfs_size": len(data)} if lfs else {})}
    for rel, size in (listed or {}).items():
        tree[rel] = {"size": size, "blob_id": hashlib.sha1(rel.encode()).hexdigest(),
                     **({"lfs_sha256": hashlib.sha256(rel.encode()).hexdigest(), "lfs_size": size} if rel.endswith(LFS_SUFFIXES) else {})}
    _write_tree(storage, commit, tree)
    if main:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / "main").write_text(commit)
    return snapshot


def _write_tree(storage: Path, commit: str, tree: dict[str, dict]) -> None:
    try:
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    except ImportError:  # huggingface_hub before 1.x keeps no tree listings
        return
    write_tree_cache(str(storage), commit, {path: TreeCacheEntry.from_json(info) for path, info in tree.items()})


def offline_caches(tmp_path: Path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE, an empty Hugging Face cache (returned) and an empty dream cache; no $DREAM_MODEL (the default model)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "dream"))
    monkeypatch.delenv("DREAM_MODEL", raising=False)
    return cache


def check_cache(cache: Path) -> dict[str, set[str]]:
    """{repo id: commits} as huggingface_hub's `scan_cache_dir` reads the cache; it reports what it cannot read."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    return {repo.repo_id: {rev.commit_hash for rev in repo.revisions} for repo in info.repos}
