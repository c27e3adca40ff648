"""`dream 'a prompt'` with nothing but a Hugging Face cache: Kandinsky 2.2, the default model, resolved at its pinned commits,
converted once, sampled; the inpainting U-Net fetched on the first --mask. Offline: the cache holds the diffusers-written
tiny Kandinsky folders (tests/fixtures/kandinsky/tiny) under the real repo names and the pinned commits, and lists the
pickles the real repos also hold, which are never fetched."""

import json

import pytest
import torch
from click.testing import CliRunner
from fixtures.kandinsky import loader as kf
from helpers.hf_cache import cache_repo, check_cache, offline_caches, repo_folder
from PIL import Image

from dalle2_core.families.kandinsky.preset import (
    DECODER_REPO,
    DECODER_REVISION,
    INPAINT_REPO,
    INPAINT_REVISION,
    PRIOR_REPO,
    PRIOR_REVISION,
)
from dalle2_core.pipeline import load_pipeline
from dream_cli.cli import cli
from dream_cli.output import SETTINGS_CHUNK, read_png_text

FAST = ("--steps", "2", "--prior-steps", "2", "--seed", "1", "-q")
PICKLES = ("diffusion_pytorch_model.bin",)
PRIOR_LISTED = {"README.md": 6_000, "prior/diffusion_pytorch_model.bin": 4_100_000_000, "text_encoder/pytorch_model.bin": 2_780_000_000,
                "image_encoder/pytorch_model.bin": 3_690_000_000}
DECODER_LISTED = {"README.md": 6_000, "unet/diffusion_pytorch_model.bin": 5_010_000_000, "movq/diffusion_pytorch_model.bin": 271_000_000}
INPAINT_LISTED = {"README.md": 6_000, "unet/diffusion_pytorch_model.bin": 5_010_000_000}


@pytest.fixture
def env(tmp_path, monkeypatch):
    cache = offline_caches(tmp_path, monkeypatch)
    cache_repo(cache, PRIOR_REPO, PRIOR_REVISION, kf.PRIOR, listed=PRIOR_LISTED)
    cache_repo(cache, DECODER_REPO, DECODER_REVISION, kf.DECODER, listed=DECODER_LISTED)
    return cache


def dream(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def settings(png) -> dict:
    return json.loads(read_png_text(png)[SETTINGS_CHUNK])


def test_kandinsky_is_the_default_and_runs_from_the_hub_cache(env, tmp_path):
    assert check_cache(env) == {PRIOR_REPO: {PRIOR_REVISION}, DECODER_REPO: {DECODER_REVISION}}
    result = dream("a sunset on everest", *FAST, "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    png = tmp_path / "out" / "a-sunset-on-everest-1-0.png"
    with Image.open(png) as image:
        assert image.size == (16, 16)  # the decoder config's own size (512 at full size)
    info = settings(png)
    assert (info["model"], info["model_source"], info["steps"], info["prior_steps"]) == ("kandinsky", "preset", [2], 2)
    assert info["model_sources"] == [f"{PRIOR_REPO}@{PRIOR_REVISION}", f"{DECODER_REPO}@{DECODER_REVISION}"]
    converted = tmp_path / "dream" / "models" / "kandinsky"
    source = json.loads((converted / "source.json").read_text())
    assert (source["prior"], source["decoder"]) == ({"repo": PRIOR_REPO, "commit": PRIOR_REVISION},
                                                    {"repo": DECODER_REPO, "commit": DECODER_REVISION})
    assert sorted(p.name for p in converted.iterdir()) == ["clip", "decoder", "image_encoder", "model_index.json", "prior", "source.json"]
    assert json.loads((converted / "clip" / "config.json").read_text())["config"]["pad_token"] == "<|endoftext|>"
    for repo, revision in ((PRIOR_REPO, PRIOR_REVISION), (DECODER_REPO, DECODER_REVISION)):  # safetensors and JSON only
        snapshot = repo_folder(env, repo) / "snapshots" / revision
        assert not list(snapshot.rglob("*.bin")) and list(snapshot.rglob("*.safetensors"))
    stamp = (converted / "model_index.json").stat().st_mtime_ns
    again = dream("a sunset on everest", *FAST, "--size", "24x16", "--outdir", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert (converted / "model_index.json").stat().st_mtime_ns == stamp  # converted once
    wide = tmp_path / "again" / "a-sunset-on-everest-1-0.png"
    with Image.open(wide) as image:
        assert image.size == (24, 16)
    assert settings(wide)["size"] == [24, 16] and "--size 24x16" in settings(wide)["command"]


def test_the_first_mask_fetches_the_pinned_inpainting_unet(env, tmp_path):
    picture, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray((torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(picture)
    white = torch.zeros(16, 16, dtype=torch.uint8)
    white[4:12, 4:12] = 255
    Image.fromarray(white.numpy(), mode="L").save(mask)
    args = ("--init-image", picture, "--mask", mask, *FAST, "--outdir", tmp_path / "out")
    missing = dream("a hat", *args)
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert f"'{INPAINT_REPO}'" in missing.output and "not in the local Hugging Face cache" in missing.output
    cache_repo(env, INPAINT_REPO, INPAINT_REVISION, kf.INPAINT, listed=INPAINT_LISTED)
    result = dream("a hat", *args, "--sampler", "dpmpp")  # the inpainting U-Net runs with any sampler
    assert result.exit_code == 0, result.output
    png = tmp_path / "out" / "a-hat-1-0.png"
    assert settings(png)["model_sources"][-1] == f"{INPAINT_REPO}@{INPAINT_REVISION}" and settings(png)["sampler"] == "dpmpp"
    converted = tmp_path / "dream" / "models" / "kandinsky"
    assert (converted / "decoder_inpaint").is_dir()
    assert load_pipeline(converted).repaints is False
    import numpy as np

    with Image.open(png) as out, Image.open(picture) as original:
        kept = (np.asarray(out.convert("RGB")) == np.asarray(original.convert("RGB"))).all(axis=-1)
    assert kept[white.numpy() == 0].all()  # black = kept, pixel for pixel
