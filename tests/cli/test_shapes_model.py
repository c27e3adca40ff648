"""The bundled offline model (`--model shapes`): what ships, that it loads, and that it draws its prompts."""

import dataclasses
import json
import runpy
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from dalle2_core.checkpoint import SamplingSettings, load_model, read_index
from dalle2_core.diffusion import SAMPLERS
from dalle2_core.hub import bundled_path, resolve_model
from dalle2_core.shapes import eval_prompts, score
from dream_cli.cli import cli
from dream_cli.output import SETTINGS_CHUNK

BUNDLE = bundled_path("shapes")


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_model("shapes").path)


def test_bundle_is_small_float16_and_has_measured_defaults():
    files = [p for p in BUNDLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    weights = sorted(p.relative_to(BUNDLE).as_posix() for p in BUNDLE.rglob("model.safetensors"))
    assert weights == ["clip/model.safetensors", "decoder/model.safetensors", "prior/model.safetensors"]
    for path in BUNDLE.rglob("model.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    components, defaults, family, fast = read_index(BUNDLE)
    assert family == "unclip"
    assert components == ["clip", "prior", "decoder"]
    assert len(defaults.steps) == 2 and max(defaults.steps) <= 50 and defaults.prior_steps <= 50
    assert defaults.sampler in SAMPLERS
    decoder = json.loads((BUNDLE / "decoder" / "config.json").read_text())["config"]
    assert decoder["image_sizes"] == [32, 64] and decoder["conditioning"]["condition_on_text_encodings"]
    # both unets read the text encodings (the upsampler too: it keeps small shapes apart)
    assert [u["conditioning"]["cond_on_text_encodings"] for u in decoder["unets"]] == [True, True]


def test_the_bundle_script_records_defaults_and_fast_settings(tmp_path):
    from helpers.checkpoint_tiny import save_tiny_model

    bundle = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "bundle_shapes.py"))["main"]
    out = bundle([str(save_tiny_model(tmp_path / "run")), str(tmp_path / "out"), "--sampler", "dpmpp", "--steps", "3,2",
                  "--prior-steps", "3", "--cond-scale", "2,1", "--spacing", "trailing", "--fast-steps", "2,1", "--fast-prior-steps", "2"])
    index = read_index(out)
    assert index.defaults == SamplingSettings(sampler="dpmpp", steps=(3, 2), prior_steps=3, cond_scale=(2.0, 1.0), spacing="trailing")
    assert index.fast == dataclasses.replace(index.defaults, steps=(2, 1), prior_steps=2)
    assert json.loads((out / "model_index.json").read_text())["defaults"]["fast"] == {"steps": [2, 1], "prior_steps": 2}


def test_loads_in_the_requested_precision(model):
    # stored as float16, rebuilt in float32 unless asked otherwise
    for module in (model.clip, model.prior, model.decoder):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
        assert not module.training
    bf16 = load_model(BUNDLE, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.decoder.parameters()} == {torch.bfloat16}


@torch.no_grad()
def test_follows_its_prompts_with_the_default_settings(model):
    prompts, compositions = eval_prompts("seen", 16, seed=3)
    d = model.defaults
    g = torch.Generator().manual_seed(0)
    embeds = model.prior.sample(text=prompts, num_samples_per_batch=d.prior_samples, cond_scale=d.prior_cond_scale,
                                steps=d.prior_steps, sampler=d.sampler, generator=g)
    images = model.decoder.sample(image_embed=embeds, text=prompts, cond_scale=d.cond_scale, steps=d.steps,
                                  sampler=d.sampler, generator=g)
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    seen = score(images, compositions).seen
    # shape is the attribute this model still misses on some small objects (benchmarks/results/shapes-eval.md);
    # the others hold. The bounds leave room for other platforms' numerics. Colour: small green on warm backgrounds can turn teal (read as blue)
    assert seen.n == 16 and seen.adherence >= 0.6, seen
    assert min(seen.accuracy[a] for a in ("size", "position", "background")) >= 0.95, seen
    assert seen.accuracy["color"] >= 0.85, seen


def test_dream_model_shapes_writes_a_64px_png(tmp_path):
    result = CliRunner().invoke(cli, ["--model", "shapes", "-n", "1", "--seed", "0", "--steps", "4,2", "--prior-steps", "4",
                                      "--outdir", str(tmp_path), "-q", "a large red circle on the left on a blue background"])
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.png")
    assert result.stdout.split() == [str(path)]
    with Image.open(path) as img:
        assert img.size == (64, 64)
        assert json.loads(img.text[SETTINGS_CHUNK])["model"] == "shapes"
