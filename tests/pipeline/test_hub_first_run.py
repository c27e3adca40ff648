"""The first run of `dream --model karlo` and `dream --model laion`, offline, from a Hugging Face cache that holds
the foreign tools' fixtures under the real repo names and the pinned commits: resolve, convert once, sample, and the
PNG naming repo and commit. Also what the pins refuse.

The files: tests/fixtures/hub (a tiny Karlo UnCLIPPipeline saved by diffusers 0.42 / transformers 5, a tiny CLIPModel
standing for openai/clip-vit-large-patch14, transformers' outputs on both) and tests/fixtures/laion (DALLE2-pytorch
1.1.0's files at toy widths). Their sha256 are not the published pins', so the LAION runs take the prior's pinned
hash from the fixture (its commit stays the pinned one), and LAION's CLIP, OpenAI's ViT-L/14 from open_clip's cache,
is the one thing a tiny CLIP stands for (it cannot be had offline).
"""

import functools
import hashlib
import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.hf_cache import cache_repo, check_cache, offline_caches, repo_folder
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dalle2_core import hub_files
from dalle2_core.clip import PromptTruncatedWarning
from dalle2_core.families.karlo.preset import KARLO_REPO, KARLO_REVISION, VISION_TOWER_REPO, VISION_TOWER_REVISION
from dalle2_core.families.unclip import preset as presets
from dalle2_core.hub import ModelNotFoundError, resolve_model
from dalle2_core.pipeline import load_pipeline
from dream_cli.cli import cli
from dream_cli.output import SETTINGS_CHUNK, read_png_text

FIXTURES = Path(__file__).parents[1] / "fixtures"
KARLO, CLIP = FIXTURES / "hub" / "kakaobrain--karlo-v1-alpha", FIXTURES / "hub" / "openai--clip-vit-large-patch14"
REFERENCE = load_file(str(FIXTURES / "hub" / "reference.safetensors"))
PROMPTS = safe_open(str(FIXTURES / "hub" / "reference.safetensors"), "pt").metadata()["prompts"].split("\n")
LAION = {name: FIXTURES / "laion" / f"{name}.{'json' if name.endswith('config') else 'pth'}"
         for name in ("prior", "prior_config", "decoder", "upsampler", "upsampler_config")}
UPSAMPLER_COMMIT = "0c1e8fb3a5d5b7e3b2f6a3e0d1c2b3a4f5e6d7c8"  # Veldrovive/upsamplers has no known pin: whatever main is
# what the repos hold beside the files the presets take: pickles and other frameworks' weights, never downloaded
KARLO_LISTED = {".gitattributes": 1_500, "README.md": 4_000, **{
    f"{c}/diffusion_pytorch_model.bin": 10**9 for c in ("prior", "decoder", "super_res_first", "super_res_last", "text_proj")
}, "text_encoder/pytorch_model.bin": 494_000_000}
CLIP_LISTED = {".gitattributes": 1_500, "README.md": 7_900, "pytorch_model.bin": 1_710_671_599, "tf_model.h5": 1_711_114_176,
               "flax_model.msgpack": 1_710_639_803, "vocab.json": 961_143, "merges.txt": 524_619, "tokenizer.json": 2_224_003,
               "tokenizer_config.json": 905, "special_tokens_map.json": 389}
FAST = ("--steps", "2,2", "--prior-steps", "2", "--seed", "1", "-q")
KARLO_FAST = ("--model", "karlo", *FAST)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE, an empty Hugging Face cache and an empty dream cache; no $DREAM_MODEL."""
    return offline_caches(tmp_path, monkeypatch)


def dream(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def settings(png: Path) -> dict:
    return json.loads(read_png_text(png)[SETTINGS_CHUNK])


def test_karlo_runs_from_the_hub_cache(env, tmp_path):
    cache_repo(env, KARLO_REPO, KARLO_REVISION, KARLO, listed=KARLO_LISTED)
    assert check_cache(env) == {KARLO_REPO: {KARLO_REVISION}}  # huggingface_hub reads the layout as its own
    result = dream("a sunset on everest", *KARLO_FAST, "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    png = tmp_path / "out" / "a-sunset-on-everest-1-0.png"
    info = settings(png)
    with Image.open(png) as image:
        assert image.size == (16, 16)
    assert (info["model"], info["model_source"], info["model_revision"]) == ("karlo", "preset", KARLO_REVISION)
    assert info["model_sources"] == [f"{KARLO_REPO}@{KARLO_REVISION}"]  # no vision tower: text to image never needs it
    converted = tmp_path / "dream" / "models" / "karlo"
    source = json.loads((converted / "source.json").read_text())
    assert (source["repo"], source["commit"], "vision" in source) == (KARLO_REPO, KARLO_REVISION, False)
    clip_config = json.loads((converted / "clip" / "config.json").read_text())["config"]
    assert clip_config["pad_token"] == "!" and clip_config["vision"] is False
    # the converted text tower and its tokenizer give what transformers gives from the same files
    clip = load_pipeline(converted).clip
    with pytest.warns(PromptTruncatedWarning, match="needs 98 tokens but the context is 77"):  # the last prompt
        tokens = clip.tokenize(PROMPTS)
    assert torch.equal(tokens, REFERENCE["input_ids"]) and torch.equal(clip.text_mask(tokens).long(), REFERENCE["attention_mask"])
    with torch.no_grad():
        embed, states, _, _ = clip.embed_text(tokens)
    torch.testing.assert_close(embed, REFERENCE["text_embeds"], rtol=0, atol=1e-6)
    torch.testing.assert_close(states, REFERENCE["last_hidden_state"], rtol=0, atol=1e-6)
    stamp = (converted / "model_index.json").stat().st_mtime_ns
    assert dream("a sunset on everest", *KARLO_FAST, "--outdir", tmp_path / "again").exit_code == 0
    assert (converted / "model_index.json").stat().st_mtime_ns == stamp  # converted once
    assert settings(tmp_path / "again" / "a-sunset-on-everest-1-0.png")["model_sources"] == info["model_sources"]


def test_pictures_fetch_the_pinned_vision_tower_on_first_use(env, tmp_path):
    cache_repo(env, KARLO_REPO, KARLO_REVISION, KARLO, listed=KARLO_LISTED)
    picture = tmp_path / "photo.png"
    Image.open(FIXTURES / "hf_clip" / "image.png").save(picture)
    args = ("--image", picture, *KARLO_FAST, "--outdir", tmp_path / "out")
    missing = dream(*args)
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert "'openai/clip-vit-large-patch14'" in missing.output and "not in the local Hugging Face cache" in missing.output
    cache_repo(env, VISION_TOWER_REPO, VISION_TOWER_REVISION, CLIP, listed=CLIP_LISTED)
    assert check_cache(env) == {KARLO_REPO: {KARLO_REVISION}, VISION_TOWER_REPO: {VISION_TOWER_REVISION}}
    result = dream(*args)
    assert result.exit_code == 0, result.output
    assert settings(tmp_path / "out" / "photo-1-0.png")["model_sources"] == [
        f"{KARLO_REPO}@{KARLO_REVISION}", f"{VISION_TOWER_REPO}@{VISION_TOWER_REVISION}",
    ]
    snapshot = repo_folder(env, VISION_TOWER_REPO) / "snapshots" / VISION_TOWER_REVISION
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    clip = load_pipeline(tmp_path / "dream" / "models" / "karlo").clip
    with torch.no_grad():
        image_embed = clip.encode_pixel_values(REFERENCE["pixel_values"]).image_embed
    torch.testing.assert_close(image_embed, REFERENCE["image_embeds"], rtol=0, atol=1e-6)  # transformers' own image embedding


def revision_not_found():
    from huggingface_hub import errors

    httpx = importlib.import_module(errors.Response.__module__.split(".")[0])
    response = errors.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/x/revision/y"))
    return errors.RevisionNotFoundError("404 Client Error: Revision Not Found", response=response)


def test_a_pinned_commit_the_hub_no_longer_serves(tmp_path, monkeypatch):
    import huggingface_hub

    def gone(*args, **kwargs):
        raise revision_not_found()

    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "dream"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DREAM_MODEL", raising=False)
    monkeypatch.setattr(hub_files, "offline", lambda: False)  # as if the Hub answered
    monkeypatch.setattr(huggingface_hub, "snapshot_download", gone)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gone)
    with pytest.raises(ModelNotFoundError, match=(
        rf"^Hugging Face repo 'kakaobrain/karlo-v1-alpha' is pinned to commit {KARLO_REVISION} of 'kakaobrain/karlo-v1-alpha', "
        r"which the Hugging Face Hub no longer serves$"
    )) as err:
        resolve_model("karlo")
    assert (err.value.pinned_repo, err.value.pinned_revision, err.value.pinned_file) == (KARLO_REPO, KARLO_REVISION, None)
    result = dream("--model", "karlo", "a sunset on everest", "-q")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.rstrip().endswith("; choose another commit with --model kakaobrain/karlo-v1-alpha@REVISION")
    result = dream("a sunset on everest", "-q")  # the default, Kandinsky 2.2: two repos, converted as a pair
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "Hugging Face repo 'kandinsky-community/kandinsky-2-2-prior' is pinned to commit" in result.output
    assert result.output.rstrip().endswith("; download the prior and decoder at other commits and convert the pair with: "
                                           "dream convert diffusers PRIOR DECODER --out DIR")
    result = dream("--model", "laion", "a sunset on everest", "-q")
    assert result.exit_code == 1 and "LAION file laion/DALLE2-PyTorch/prior/latest.pth is pinned to commit 38741d4b" in result.output
    assert "convert it with `dream convert laion`" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "dream" / "models").exists()


# --- LAION ------------------------------------------------------------------------------------------------------


def cache_laion(cache: Path) -> None:
    cache_repo(cache, presets.LAION_REPO, presets.LAION_PRIOR_REVISION,
               {"prior/latest.pth": LAION["prior"], "prior/prior_config.json": LAION["prior_config"]}, main=False)
    cache_repo(cache, presets.LAION_REPO, presets.LAION_DECODER_REVISION, {"decoder/v1.0.2/latest.pth": LAION["decoder"]})
    cache_repo(cache, "Veldrovive/upsamplers", UPSAMPLER_COMMIT,
               {"working/latest.pth": LAION["upsampler"], "working/decoder_config.json": LAION["upsampler_config"]})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def laion_env(env, monkeypatch):
    from dalle2_core.clip import CLIP
    from dalle2_core.families.unclip import laion

    cache_laion(env)
    torch.manual_seed(0)
    clip = CLIP(dim_text=16, dim_image=16, dim_latent=16, num_text_tokens=49408, text_enc_depth=1, text_seq_len=6,
                text_heads=2, visual_enc_depth=1, visual_image_size=16, visual_patch_size=8, visual_heads=2)
    monkeypatch.setattr(laion, "convert_laion", functools.partial(laion.convert_laion, clip=clip))  # OpenAI's ViT-L/14 stand-in
    return env


def test_laion_runs_from_the_hub_cache_at_the_pinned_commits(laion_env, tmp_path, monkeypatch):
    assert check_cache(laion_env) == {
        presets.LAION_REPO: {presets.LAION_PRIOR_REVISION, presets.LAION_DECODER_REVISION}, "Veldrovive/upsamplers": {UPSAMPLER_COMMIT},
    }
    pins = dict(presets.LAION_FILES, prior=presets.LAION_FILES["prior"]._replace(sha256=sha256(LAION["prior"])))
    monkeypatch.setattr(presets, "LAION_FILES", pins)
    result = dream("--model", "laion", "a sunset on everest", *FAST, "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    info = settings(tmp_path / "out" / "a-sunset-on-everest-1-0.png")
    assert (info["model"], info["model_revision"]) == ("laion", presets.LAION_DECODER_REVISION)
    assert info["model_sources"] == [
        f"laion/DALLE2-PyTorch@{presets.LAION_PRIOR_REVISION}:prior/latest.pth",
        f"laion/DALLE2-PyTorch@{presets.LAION_PRIOR_REVISION}:prior/prior_config.json",
        f"laion/DALLE2-PyTorch@{presets.LAION_DECODER_REVISION}:decoder/v1.0.2/latest.pth",
        f"Veldrovive/upsamplers@{UPSAMPLER_COMMIT}:working/latest.pth",
        f"Veldrovive/upsamplers@{UPSAMPLER_COMMIT}:working/decoder_config.json",
    ]
    notes = json.loads((tmp_path / "dream" / "hub-files.json").read_text())  # what the first downloads found
    assert notes["laion/DALLE2-PyTorch:decoder/v1.0.2/latest.pth"] == {"commit": presets.LAION_DECODER_REVISION,
                                                                       "sha256": sha256(LAION["decoder"])}
    assert notes["Veldrovive/upsamplers:working/latest.pth"] == {"commit": UPSAMPLER_COMMIT, "sha256": sha256(LAION["upsampler"])}
    converted = tmp_path / "dream" / "models" / "laion"
    stamp = (converted / "model_index.json").stat().st_mtime_ns
    assert resolve_model("laion").path == converted and (converted / "model_index.json").stat().st_mtime_ns == stamp

    # a later use checks what the first download recorded: a decoder that changed in the cache is refused
    shutil.rmtree(converted)
    blob = (repo_folder(laion_env, presets.LAION_REPO) / "snapshots" / presets.LAION_DECODER_REVISION / "decoder/v1.0.2/latest.pth").resolve()
    blob.write_bytes(LAION["upsampler"].read_bytes())
    with pytest.raises(ModelNotFoundError, match=(
        rf"^LAION file laion/DALLE2-PyTorch/decoder/v1\.0\.2/latest\.pth at commit {presets.LAION_DECODER_REVISION} has sha256 "
        rf"{sha256(LAION['upsampler'])}, not the recorded at its first download {sha256(LAION['decoder'])}: .*nothing was converted"
    )):
        resolve_model("laion")
    assert not converted.exists()


def test_laion_refuses_a_prior_that_is_not_the_published_one(laion_env, tmp_path):
    result = dream("--model", "laion", "a sunset on everest", *FAST, "--outdir", tmp_path / "out")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    published = "99e749d800b337c361bef1d5dc000ac0ce69956a385e81df81029bcde0e007da"
    assert f"has sha256 {sha256(LAION['prior'])}, not the pinned {published}" in result.output
    assert not (tmp_path / "dream" / "models").exists() and not (tmp_path / "dream" / "hub-files.json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
