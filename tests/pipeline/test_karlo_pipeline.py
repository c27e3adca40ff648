"""Karlo behind the pipeline seam: conversion of a diffusers UnCLIPPipeline folder (the tiny Karlo diffusers 0.42 and
transformers 5 saved, tests/fixtures/hub), the karlo pipeline against its modules chained by hand, the CLI on it, and
the refusals. The `karlo` preset's first run from a Hugging Face cache: tests/pipeline/test_hub_first_run.py."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures.karlo import loader as kf
from safetensors.torch import load_file, save_file

from dalle2_core.clip.hf_clip_adapter import HFClipAdapter
from dalle2_core.families.karlo.convert import KARLO_DEFAULTS, convert_unclip
from dalle2_core.families.karlo.pipeline import KarloPipeline
from dalle2_core.pipeline import load_pipeline
from dalle2_core.prior import rerank_by_similarity
from dream_cli.cli import cli
from dream_cli.output import SETTINGS_CHUNK, read_png_text

KARLO = Path(__file__).parents[1] / "fixtures" / "hub" / "kakaobrain--karlo-v1-alpha"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return shutil.copytree(KARLO, tmp_path_factory.mktemp("karlo") / "src")


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    return convert_unclip(source, tmp_path_factory.mktemp("karlo") / "model").path


@pytest.fixture(scope="module")
def pipeline(converted):
    return load_pipeline(converted)


def gens(n=2, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_conversion_holds_every_tensor_of_the_diffusers_components(pipeline, converted):
    assert isinstance(pipeline, KarloPipeline) and pipeline.stage_names == ("decoder", "super-res")
    for ours, theirs in ((pipeline.prior, kf.prior(KARLO)), (pipeline.decoder, kf.cascade(KARLO))):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    index = json.loads((converted / "model_index.json").read_text())
    assert index["family"] == "karlo" and index["components"] == ["clip", "prior", "decoder"]
    assert pipeline.resolve() == pipeline.resolve(**KARLO_DEFAULTS.to_dict())
    assert pipeline.stages(pipeline.resolve()) == [("prior", 25), ("decoder", 25), ("super-res", 7)]


def test_generate_equals_the_modules_chained_and_encodes_text_once_per_batch(pipeline, monkeypatch):
    s = pipeline.resolve(steps=(3, 2), prior_steps=3)
    calls = []
    original = HFClipAdapter._embed_tokens
    monkeypatch.setattr(HFClipAdapter, "_embed_tokens", lambda self, tokens: calls.append(len(tokens)) or original(self, tokens))
    pipeline._empty.clear()
    prompts = ["a red cube", "a dog"]
    images = pipeline.generate(prompts, s, generator=gens())
    again = pipeline.generate(prompts, s, generator=gens())
    assert calls == [3, 2]  # the prompts and the empty prompt in one forward, then the prompts alone
    assert torch.equal(images, again) and images.shape == (2, 3, 16, 16)
    # by hand: CLIP's raw embeddings, the prior guided against the empty prompt, the cascade against it and its null image
    clip, prior, cascade = pipeline.clip, pipeline.prior, pipeline.decoder
    both = clip.embed_text([*prompts, ""])
    embed, states, mask = both.text_embed, both.text_encodings, both.text_mask
    empty = both.rows(2, 3)
    generators = gens()
    candidates = prior.sample_embeds(embed[:2], states[:2], mask[:2], num_samples_per_batch=1, cond_scale=4.0, steps=3,
                                     generator=generators, uncond=empty)
    image_embed = rerank_by_similarity(candidates, embed[:2])
    direct = cascade.sample(image_embed, states[:2], mask[:2], text_embed=embed[:2], cond_scale=(8.0, 1.0), steps=(3, 2),
                            generator=generators, uncond=empty)
    torch.testing.assert_close(images, direct, rtol=0, atol=1e-6)


def test_image_i_is_the_image_of_seed_plus_i_and_a_negative_prompt_steers(pipeline):
    s = pipeline.resolve(steps=(3, 2), prior_steps=3)
    batch = pipeline.generate(["a red cube"] * 2, s, generator=gens(2, seed=5))
    alone = pipeline.generate(["a red cube"], s, generator=gens(1, seed=6))
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-5)
    negative = pipeline.generate(["a red cube"], s, generator=gens(1, seed=6), negative_prompts=["a dog"])
    assert (negative - alone).abs().max() > 1e-3


def test_dream_samples_a_converted_folder_and_a_diffusers_folder_directly(converted, source, tmp_path, monkeypatch):
    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "cache"))
    fast = ("--steps", "2,2", "--prior-steps", "2", "--seed", 3, "-q")
    result = CliRunner().invoke(cli, ["--model", str(converted), *map(str, fast), "--outdir", str(tmp_path / "a"), "a red cube"])
    assert result.exit_code == 0, result.output
    info = json.loads(read_png_text(tmp_path / "a" / "a-red-cube-3-0.png")[SETTINGS_CHUNK])
    assert info["steps"] == [2, 2] and info["cond_scale"] == [8.0, 1.0] and info["prior_cond_scale"] == 4.0
    result = CliRunner().invoke(cli, ["--model", str(source), *map(str, fast), "--outdir", str(tmp_path / "b"), "a red cube"])
    assert result.exit_code == 0, result.output  # converted once into the cache, then sampled
    assert len(list((tmp_path / "cache" / "models" / "unclip").iterdir())) == 1
    a, b = (read_png_text(tmp_path / d / "a-red-cube-3-0.png") for d in "ab")
    assert json.loads(a[SETTINGS_CHUNK])["steps"] == json.loads(b[SETTINGS_CHUNK])["steps"]


def test_refusals_name_the_component_or_the_tensor(source, tmp_path):
    pickled = shutil.copytree(source, tmp_path / "pickled")
    weights = pickled / "text_proj" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    result = CliRunner().invoke(cli, ["convert", "diffusers", str(pickled), "--out", str(tmp_path / "o1")])
    assert result.exit_code == 1 and "text_proj" in result.output and "pickle" in result.output
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())
    wrong = shutil.copytree(source, tmp_path / "wrong")
    path = wrong / "decoder" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(path))
    result = CliRunner().invoke(cli, ["convert", "diffusers", str(wrong), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 1 and "conv_in.weight" in result.output and "(3, 3, 3, 3)" in result.output
    assert result.output.count("\n") == 1


def test_offloading_moves_each_network_to_the_device_only_for_its_stage(converted, monkeypatch):
    plain = load_pipeline(converted)
    s = plain.resolve(steps=(2, 2), prior_steps=2)
    expected = plain.generate(["a red cube"], s, generator=gens(1))
    pipeline = load_pipeline(converted).offload("cpu")
    moves = []
    original = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **kw: moves.append((type(self).__name__, str(a[0]))) or original(self, *a, **kw))
    images = pipeline.generate(["a red cube"], s, generator=gens(1))
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    # each network goes to the device for its stage and back — the text tower (the prompt and the empty
    # prompt in one forward), the prior, the cascade — and nothing else moves
    assert [name for name, _ in moves] == ["HFClipAdapter", "HFClipAdapter", "StandardizedPrior", "StandardizedPrior",
                                           "KarloCascade", "KarloCascade"]
    assert pipeline.device == torch.device("cpu") and all(p.device.type == "cpu" for p in pipeline.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_sampling_on_cuda_equals_sampling_on_cuda(converted):
    s_kwargs = dict(steps=(2, 2), prior_steps=2)
    on_gpu = load_pipeline(converted, device="cuda")
    expected = on_gpu.generate(["a red cube"], on_gpu.resolve(**s_kwargs), generator=[torch.Generator("cuda").manual_seed(0)])
    offloaded = load_pipeline(converted).offload("cuda")
    images = offloaded.generate(["a red cube"], offloaded.resolve(**s_kwargs), generator=[torch.Generator("cuda").manual_seed(0)])
    torch.testing.assert_close(images, expected)
    assert all(p.device.type == "cpu" for p in offloaded.parameters())


def test_img2img_and_inpainting_through_the_karlo_cascade(pipeline):
    from dalle2_core.pipeline import ImageEdit

    s = pipeline.resolve(steps=(3, 2), prior_steps=2)
    picture = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    kept = pipeline.generate(["a red cube"], s, generator=gens(1), edit=ImageEdit(picture, strength=0.0))
    assert torch.equal(kept, picture)
    plain = pipeline.generate(["a red cube"], s, generator=gens(1))
    assert torch.equal(pipeline.generate(["a red cube"], s, generator=gens(1), edit=ImageEdit(picture, strength=1.0)), plain)
    half = pipeline.generate(["a red cube"], s, generator=gens(1), edit=ImageEdit(picture, strength=0.6))
    assert 0 < (half - picture).abs().mean() < (plain - picture).abs().mean()
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 8:] = True  # regenerate this box
    painted = pipeline.generate(["a red cube"], s, generator=gens(1), edit=ImageEdit(picture, mask=mask))
    assert torch.equal(painted[0][:, ~mask[0]], picture[0][:, ~mask[0]]) and (painted - picture).abs().max() > 1e-3
