"""Downloading diffusers UnCLIP pipeline repos (Karlo): file patterns, pinned commits, detection; offline, on a
Hugging Face cache laid out as huggingface_hub lays it out (blobs, snapshots, refs, cached tree listings)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import filter_repo_objects

from dalle2_core.convert.diffusers_folder import pipeline_class
from dalle2_core.families.karlo.preset import KARLO_REPO, KARLO_REVISION, UNCLIP_PIPELINES
from dalle2_core.hub_files import ModelNotFoundError, download_pipeline, hub_pipeline_class, pipeline_file_patterns

COMMIT_A, COMMIT_B = KARLO_REVISION, "b" * 40  # Karlo's pinned commit, and a newer one main points to
# a Karlo-like repo listing: what the Hub holds (pickles and fp16 variants included)
LISTING = [
    ".gitattributes", "README.md", "model_index.json",
    "prior/config.json", "prior/diffusion_pytorch_model.safetensors", "prior/diffusion_pytorch_model.bin",
    "prior/diffusion_pytorch_model.fp16.safetensors",
    "decoder/config.json", "decoder/diffusion_pytorch_model-00001-of-00002.safetensors",
    "decoder/diffusion_pytorch_model-00002-of-00002.safetensors", "decoder/diffusion_pytorch_model.safetensors.index.json",
    "decoder/diffusion_pytorch_model.bin",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "text_proj/config.json", "text_proj/diffusion_pytorch_model.safetensors", "text_proj/diffusion_pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/vocab.json", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "prior_scheduler/scheduler_config.json", "decoder/diffusion_flax_model.msgpack",
]
NEEDED = {
    "model_index.json", "prior/config.json", "prior/diffusion_pytorch_model.safetensors", "decoder/config.json",
    "decoder/diffusion_pytorch_model-00001-of-00002.safetensors", "decoder/diffusion_pytorch_model-00002-of-00002.safetensors",
    "decoder/diffusion_pytorch_model.safetensors.index.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_proj/config.json", "text_proj/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt", "tokenizer/vocab.json",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "prior_scheduler/scheduler_config.json",
}


def content(path: str, class_name: str) -> bytes:
    if path == "model_index.json":
        return json.dumps({"_class_name": class_name, "prior": ["diffusers", "PriorTransformer"]}).encode()
    return f"{path}\n".encode()


def cached_repo(cache: Path, repo_id: str, commit: str, files: set[str], class_name: str = "UnCLIPPipeline") -> Path:
    """One commit of `repo_id` in the cache: `files` downloaded, the whole LISTING in its tree listing."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    for path in sorted(files):
        data = content(path, class_name)
        blob = storage / "blobs" / hashlib.sha256(data + commit.encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    tree = {p: {"size": len(content(p, class_name)), "blob_id": hashlib.sha1(p.encode()).hexdigest()} for p in LISTING}
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    (storage / "refs").mkdir(exist_ok=True)
    return storage


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    storage = cached_repo(tmp_path / "hub", KARLO_REPO, COMMIT_A, NEEDED)
    cached_repo(tmp_path / "hub", KARLO_REPO, COMMIT_B, NEEDED)
    (storage / "refs" / "main").write_text(COMMIT_B)
    return tmp_path / "hub"


def test_patterns_keep_configs_tokenizer_and_safetensors_never_pickles():
    allow, ignore = pipeline_file_patterns()
    assert set(filter_repo_objects(LISTING, allow_patterns=allow, ignore_patterns=ignore)) == NEEDED
    allow, ignore = pipeline_file_patterns("fp16")
    kept = set(filter_repo_objects(LISTING, allow_patterns=allow, ignore_patterns=ignore))
    assert {p for p in kept if p.endswith(".safetensors")} == {"prior/diffusion_pytorch_model.fp16.safetensors"}
    assert not any(p.endswith((".bin", ".msgpack")) for p in kept) and "tokenizer/merges.txt" in kept


def test_download_reads_the_cache_at_the_pinned_commit_or_the_default_branch(cache, monkeypatch):
    resolved = download_pipeline(KARLO_REPO, pin=KARLO_REVISION, expect=UNCLIP_PIPELINES, cache_dir=cache)  # the pin, whatever main says
    assert resolved.path == cache / "models--kakaobrain--karlo-v1-alpha" / "snapshots" / COMMIT_A
    assert (resolved.spec, resolved.source, resolved.revision) == (f"{KARLO_REPO}@{COMMIT_A}", "hub", COMMIT_A)
    assert resolved.sources == (f"{KARLO_REPO}@{COMMIT_A}",) and pipeline_class(resolved.path) == "UnCLIPPipeline"
    explicit = download_pipeline(KARLO_REPO, COMMIT_B, pin=KARLO_REVISION, expect=UNCLIP_PIPELINES, cache_dir=cache)
    assert explicit.revision == COMMIT_B  # an explicit revision wins over the pin
    unpinned = download_pipeline(KARLO_REPO, expect=UNCLIP_PIPELINES, cache_dir=cache)  # no pin: the default branch, commit recorded
    assert unpinned.revision == COMMIT_B and unpinned.spec == KARLO_REPO


def test_the_cached_tree_listing_would_demand_the_pickles_without_the_patterns(cache):
    # huggingface_hub checks a cached snapshot against its tree listing: only the patterns make it complete
    with pytest.raises(LocalEntryNotFoundError, match=r"is incomplete: \d+ file\(s\) are missing"):
        snapshot_download(KARLO_REPO, revision=COMMIT_A, cache_dir=cache, local_files_only=True)
    shutil.rmtree(cache / "models--kakaobrain--karlo-v1-alpha" / "snapshots" / COMMIT_A / "tokenizer")
    with pytest.raises(ModelNotFoundError, match=r"^Hugging Face repo 'kakaobrain/karlo-v1-alpha' is not in the local Hugging Face cache"):
        download_pipeline(KARLO_REPO, COMMIT_A, cache_dir=cache, expect=UNCLIP_PIPELINES)


def test_repos_that_are_not_unclip_pipelines_or_not_cached(cache):
    other = cached_repo(cache, "org/sd", COMMIT_A, NEEDED, class_name="StableDiffusionPipeline")
    (other / "refs" / "main").write_text(COMMIT_A)
    with pytest.raises(ModelNotFoundError, match=(
        r"^Hugging Face repo 'org/sd' is not the diffusers pipeline expected: its model_index\.json names "
        r"'StableDiffusionPipeline'; expected UnCLIPPipeline or UnCLIPImageVariationPipeline$"
    )):
        download_pipeline("org/sd", cache_dir=cache, expect=UNCLIP_PIPELINES)
    assert hub_pipeline_class("org/sd", cache_dir=cache) == "StableDiffusionPipeline"
    assert hub_pipeline_class(KARLO_REPO, COMMIT_A, cache_dir=cache) == "UnCLIPPipeline"
    assert pipeline_class(other / "snapshots" / COMMIT_A) == "StableDiffusionPipeline"
    with pytest.raises(ModelNotFoundError, match=r"'org/missing' is not in the local Hugging Face cache"):
        download_pipeline("org/missing", cache_dir=cache, expect=UNCLIP_PIPELINES)
    with pytest.raises(ModelNotFoundError, match=r"^Hugging Face repo 'kakaobrain/karlo-v1-alpha' is not in the local Hugging Face cache"):
        download_pipeline(KARLO_REPO, "c" * 40, cache_dir=cache, expect=UNCLIP_PIPELINES)  # a commit never downloaded
