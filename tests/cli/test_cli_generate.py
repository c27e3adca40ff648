"""`dream PROMPT` and `dream interpolate` on a tiny model folder: files, metadata, seeds, errors."""

import hashlib
import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch
from helpers.checkpoint_tiny import copy_model, save_tiny_model
from helpers.cli_helpers import dream
from PIL import Image

from dalle2_core.families.unclip.pipeline import UnclipPipeline
from dream_cli.output import SETTINGS_CHUNK, read_png_text


def pixels(path):
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def same_picture(a: bytes, b: bytes) -> bool:
    """8-bit pictures of one computation: no pixel more than 2 levels apart, 99% of them equal."""
    x, y = np.frombuffer(a, dtype=np.uint8).astype(int), np.frombuffer(b, dtype=np.uint8).astype(int)
    return x.shape == y.shape and np.abs(x - y).max() <= 2 and (x == y).mean() >= 0.99


def pngs(folder):
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def test_generate_writes_named_pngs_with_metadata(model_dir, tmp_path):
    result = dream("--model", model_dir, "-n", 2, "--seed", 5, "--outdir", tmp_path, "a red cube")
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path) == ["a-red-cube-5-0.png", "a-red-cube-5-1.png"]
    assert result.stdout.split() == [str(tmp_path / "a-red-cube-5-0.png"), str(tmp_path / "a-red-cube-5-1.png")]
    assert "seed 5" in result.stderr and "unet 2" in result.stderr  # info line and per-stage progress

    text = read_png_text(tmp_path / "a-red-cube-5-1.png")
    # defaults from the model folder: steps (3, 2), guidance (2, 1), ddim, prior 3 steps
    model_hash = hashlib.sha256((model_dir / "decoder" / "model.safetensors").read_bytes()).hexdigest()[:10]
    assert text["parameters"].splitlines() == [
        "a red cube",
        f"Steps: 3, Sampler: DDIM, CFG scale: 2, Seed: 6, Size: 32x32, Model hash: {model_hash}, Model: " + model_dir.name
        + ", Decoder steps: 3/2, Decoder CFG scale: 2/1, Prior steps: 3, Prior CFG scale: 1, Prior samples: 2, Version: dream 0.1.0",
    ]
    info = json.loads(text[SETTINGS_CHUNK])
    assert info["prompt"] == "a red cube" and info["seed"] == 6 and info["base_seed"] == 5 and info["index"] == 1
    assert info["steps"] == [3, 2] and info["cond_scale"] == [2.0, 1.0] and info["sampler"] == "ddim"
    assert info["prior_steps"] == 3 and info["prior_samples"] == 2 and info["size"] == [32, 32]
    assert info["command"].startswith(f"dream --model {model_dir.name} --seed 6 -n 1 --sampler ddim")  # a local folder by name


def test_same_seed_same_pixels_and_image_i_uses_seed_plus_i(model_dir, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert dream("--model", model_dir, "-n", 2, "--seed", 11, "--outdir", a, "-q", "a blue ball").exit_code == 0
    assert dream("--model", model_dir, "-n", 2, "--seed", 11, "--outdir", b, "-q", "a blue ball").exit_code == 0
    assert dream("--model", model_dir, "--seed", 12, "--outdir", c, "-q", "a blue ball").exit_code == 0
    first, second = pixels(a / "a-blue-ball-11-0.png"), pixels(a / "a-blue-ball-11-1.png")
    assert first == pixels(b / "a-blue-ball-11-0.png") and second == pixels(b / "a-blue-ball-11-1.png")
    assert first != second  # different seeds, different images
    # image 1 of seed 11 (drawn in one batch with image 0) is image 0 of seed 12, drawn alone: the same computation
    # and noise, but a batch of one and of two may take kernels that sum in another order (a few float32 ulps, see
    # test_checkpoint.test_round_trip_outputs_are_identical), which can tip a value to the next of 256 levels
    assert same_picture(pixels(c / "a-blue-ball-12-0.png"), second)
    # the regenerate command in the metadata reproduces the image
    command = json.loads(read_png_text(a / "a-blue-ball-11-1.png")[SETTINGS_CHUNK])["command"]
    args = shlex.split(command)
    assert args[0] == "dream" and args[-1] == "a blue ball" and "--" not in args
    d = tmp_path / "d"
    result = dream(*args[1:], "--model", model_dir, "--outdir", d, "-q")  # options appended to the command override it
    assert result.exit_code == 0, result.output
    assert pixels(d / "a-blue-ball-12-0.png") == pixels(c / "a-blue-ball-12-0.png")  # the same call: the same bits


def test_guidance_and_steps_options_change_the_image(model_dir, tmp_path):
    base = ("--model", model_dir, "--seed", 3, "-q", "a cube")
    assert dream(*base, "--outdir", tmp_path / "a").exit_code == 0
    assert dream(*base, "--outdir", tmp_path / "b", "--cond-scale", "1,1").exit_code == 0
    assert dream(*base, "--outdir", tmp_path / "c", "--steps", 2, "--sampler", "dpmpp").exit_code == 0
    a, b, c = (pixels(tmp_path / d / "a-cube-3-0.png") for d in "abc")
    assert a != b and a != c
    info = json.loads(read_png_text(tmp_path / "c" / "a-cube-3-0.png")[SETTINGS_CHUNK])
    assert info["steps"] == [2, 2] and info["sampler"] == "dpmpp"


def test_never_overwrites(model_dir, tmp_path):
    args = ("--model", model_dir, "--seed", 1, "--outdir", tmp_path, "-q", "x")
    assert dream(*args).exit_code == 0
    first = (tmp_path / "x-1-0.png").read_bytes()
    result = dream(*args)
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "x-1-0_1.png")
    assert pngs(tmp_path) == ["x-1-0.png", "x-1-0_1.png"]
    assert (tmp_path / "x-1-0.png").read_bytes() == first


def test_batches_grid_quiet_and_random_seed(model_dir, tmp_path):
    result = dream("--model", model_dir, "-n", 3, "--batch-size", 2, "--grid", "--outdir", tmp_path, "-q", "grid me")
    assert result.exit_code == 0 and result.stderr == ""
    names = pngs(tmp_path)
    seed = int(names[0].split("-")[2])
    assert names == [f"grid-me-{seed}-{i}.png" for i in range(3)] + [f"grid-me-{seed}-grid.png"]
    with Image.open(tmp_path / f"grid-me-{seed}-grid.png") as grid:
        assert grid.size == (64, 64)  # 3 images of 32 px on a 2 x 2 grid
    info = json.loads(read_png_text(tmp_path / f"grid-me-{seed}-2.png")[SETTINGS_CHUNK])
    assert info["batch_size"] == 2 and info["index"] == 2 and info["base_seed"] == seed


def test_prompt_equal_to_a_subcommand_follows_double_dash(model_dir, tmp_path):
    result = dream("--model", model_dir, "--seed", 0, "--outdir", tmp_path, "-q", "--", "train")
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path) == ["train-0-0.png"]


def test_long_prompt_is_truncated_with_one_warning(model_dir, tmp_path):
    prompt = " ".join(["red cube"] * 30)
    result = dream("--model", model_dir, "-n", 2, "--seed", 0, "--outdir", tmp_path, "-q", prompt)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "16" in warnings[0]


def test_image_variations_and_interpolation(model_dir, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (20, 24), (200, 30, 30)).save(source)
    out = tmp_path / "out"
    result = dream("--model", model_dir, "--image", source, "--seed", 4, "--outdir", out, "-q", "-n", 2)
    assert result.exit_code == 0, result.output
    assert pngs(out) == ["source-4-0.png", "source-4-1.png"]
    assert json.loads(read_png_text(out / "source-4-0.png")[SETTINGS_CHUNK])["image"] == "source.png"  # by name, no path

    frames = tmp_path / "frames"
    result = dream("interpolate", "a red cube", source, "--frames", 3, "--model", model_dir, "--seed", 2, "--outdir", frames, "-q")
    assert result.exit_code == 0, result.output
    assert pngs(frames) == [f"a-red-cube-to-source-2-{i}.png" for i in range(3)]
    ts = [json.loads(read_png_text(frames / f"a-red-cube-to-source-2-{i}.png")[SETTINGS_CHUNK])["t"] for i in range(3)]
    assert ts == [0.0, 0.5, 1.0]
    ends = [pixels(frames / f"a-red-cube-to-source-2-{i}.png") for i in (0, 2)]
    assert ends[0] != ends[1]


def _error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["   "], 2, "'   ' is empty"),
        (["-n", "0", "x"], 2, "'--num': 0 is not in the range x>=1"),
        (["--cond-scale", "nan", "x"], 2, "'nan': expected a finite number >= 0"),
        (["--cond-scale", "-1", "x"], 2, "'-1': expected a finite number >= 0"),
        (["--cond-scale", "3,inf", "x"], 2, "'3,inf': expected a finite number >= 0"),
        (["--prior-cond-scale", "nan", "x"], 2, "'--prior-cond-scale': 'nan'"),
        (["--cond-scale", "1,2,3", "x"], 2, "1.0,2.0,3.0 has 3 values but the model has 2 decoder stage(s); give 1 or 2"),
        (["--steps", "0", "x"], 2, "'--steps': '0': expected an integer >= 1"),
        (["--steps", "11", "x"], 2, "11 steps exceed a decoder stage's 10 training timesteps; accepted: 1..10"),
        (["--prior-steps", "0", "x"], 2, "'--prior-steps': 0 is not in the range x>=1"),
        (["--sampler", "euler", "x"], 2, "'euler' is not one of 'ddpm', 'ddim', 'dpmpp', 'dpmpp_sde'"),
        (["--precision", "fp16", "--device", "cpu", "x"], 2, "fp16 is not supported on cpu; accepted on cpu: fp32, bf16"),
        (["--seed", "-1", "x"], 2, "'--seed': -1 is not in the range"),
    ],
)
def test_usage_errors(model_dir, tmp_path, args, code, fragment):
    result = dream("--model", model_dir, "--outdir", tmp_path / "out", *args)
    assert result.exit_code == code
    assert fragment in _error_line(result)
    assert pngs(tmp_path / "out") == []


def test_cuda_asked_for_but_absent(model_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = dream("--model", model_dir, "--device", "cuda", "--outdir", tmp_path, "x")
    assert result.exit_code == 2
    assert "cuda is not available on this machine" in _error_line(result) and "accepted here: auto, cpu" in result.stderr


def test_unreadable_image(model_dir, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    result = dream("--model", model_dir, "--image", bad, "--outdir", tmp_path / "out", "x")
    assert result.exit_code == 2 and f"{str(bad)!r} is not a readable image" in _error_line(result)


def _broken_models(model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = copy_model(model_dir, tmp_path / "truncated")
    weights = truncated / "prior" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    mismatch = copy_model(model_dir, tmp_path / "mismatch")
    config = json.loads((mismatch / "prior" / "config.json").read_text())
    config["config"]["net"]["transformer"]["depth"] = 2
    (mismatch / "prior" / "config.json").write_text(json.dumps(config))
    return {
        "missing": (tmp_path / "nope", "model folder"),
        "empty": (empty, "is not a model folder: expected a model folder with model_index.json"),
        "truncated": (truncated, "prior/model.safetensors is corrupted or truncated"),
        "mismatch": (mismatch, "does not match its config.json: missing keys net."),
    }


def test_runtime_errors(model_dir, tmp_path):
    for name, (model, fragment) in _broken_models(model_dir, tmp_path).items():
        result = dream("--model", model, "--outdir", tmp_path / "out", "x")
        assert result.exit_code == 1, name
        line = _error_line(result)
        assert fragment in line and str(model) in line, (name, line)
    assert pngs(tmp_path / "out") == []

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = dream("--model", model_dir, "--outdir", blocker / "sub", "x")
    assert result.exit_code == 1 and f"cannot write to --outdir {str(blocker / 'sub')!r}" in _error_line(result)


def test_bundled_and_offline_models_say_what_to_do(tmp_path):
    from dalle2_core.hub import bundled_path

    if not (bundled_path("shapes") / "model_index.json").exists():
        result = dream("--model", "shapes", "--outdir", tmp_path, "x")
        assert result.exit_code == 1 and "the bundled model 'shapes' is not included in this build" in _error_line(result)
    result = dream("--model", "someone/not-cached", "--outdir", tmp_path, "x", env={"HF_HUB_OFFLINE": "1"})
    line = _error_line(result)
    assert result.exit_code == 1 and "'someone/not-cached' is not in the local Hugging Face cache" in line
    assert "--model shapes" in line
    assert pngs(tmp_path) == []


def test_unexpected_errors_are_one_line_unless_debug(model_dir, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(UnclipPipeline, "decode", boom)
    result = dream("--model", model_dir, "--outdir", tmp_path, "-q", "x")
    assert result.exit_code == 1
    assert _error_line(result) == "Error: RuntimeError: boom second line (run with --debug for the traceback)"
    result = dream("--model", model_dir, "--outdir", tmp_path, "-q", "--debug", "x")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert pngs(tmp_path) == []


def _hub_cache(root, model_dir, other_dir):
    """A Hugging Face cache as huggingface_hub lays it out: main -> commit A, tag v1 -> commit B."""
    repo = root / "models--org--tiny"
    commits = {"a" * 40: model_dir, "b" * 40: other_dir}
    for commit, src in commits.items():
        for path in src.rglob("*"):
            if path.is_file():
                blob = repo / "blobs" / f"{commit[:8]}-{path.parent.name}-{path.name}"
                blob.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, blob)
                link = repo / "snapshots" / commit / path.relative_to(src)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "refs" / "v1").write_text("b" * 40)


def test_hub_repo_from_the_local_cache_with_revision_pinning(model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    other = save_tiny_model(tmp_path / "other", seed=1)
    _hub_cache(tmp_path / "hf" / "hub", model_dir, other)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import time

    local = tmp_path / "local"
    assert dream("--model", model_dir, "--seed", 9, "--outdir", local, "-q", "hub").exit_code == 0
    runs = {}
    for spec in ("org/tiny", "org/tiny@v1", "org/tiny@" + "b" * 40):
        out = tmp_path / spec.replace("/", "_").replace("@", "_")
        result = dream("--model", spec, "--seed", 9, "--outdir", out, "-q", "hub")
        assert result.exit_code == 0, result.output
        info = json.loads(read_png_text(out / "hub-9-0.png")[SETTINGS_CHUNK])
        runs[spec] = (info["model_revision"], pixels(out / "hub-9-0.png"))
        assert info["model"] == spec and info["model_source"] == "hub"
    assert runs["org/tiny"] == ("a" * 40, pixels(local / "hub-9-0.png"))  # main -> commit A = model_dir
    assert runs["org/tiny@v1"][0] == "b" * 40 and runs["org/tiny@v1"] == runs["org/tiny@" + "b" * 40]
    assert runs["org/tiny@v1"][1] != runs["org/tiny"][1]  # a different model behind the pinned revision
    result = dream("--model", "org/tiny@v2", "--outdir", tmp_path / "none", "hub")
    assert result.exit_code == 1 and "'org/tiny' is not in the local Hugging Face cache" in _error_line(result)


def test_library_refusals_are_one_line(model_dir, tmp_path):
    no_dropout = copy_model(model_dir, tmp_path / "no-dropout")
    path = no_dropout / "prior" / "config.json"
    config = json.loads(path.read_text())
    config["config"]["cond_drop_prob"] = 0.0  # guidance needs a prior trained with conditional dropout
    path.write_text(json.dumps(config))
    result = dream("--model", no_dropout, "--prior-cond-scale", 2, "--outdir", tmp_path / "out", "-q", "x")
    assert result.exit_code == 1
    assert _error_line(result).startswith("Error: cond_scale=2.0 needs a prior trained with conditional dropout")
    assert pngs(tmp_path / "out") == []


def test_fast_starts_from_the_models_fast_settings_and_options_still_override_them(model_dir, tmp_path):
    from helpers.checkpoint_tiny import DEFAULTS, tiny_modules

    from dalle2_core.checkpoint import SamplingSettings, save_model
    from dalle2_core.pipeline import SettingError, load_pipeline

    clip, prior, decoder = tiny_modules()
    folder = save_model(tmp_path / "fast-model", clip=clip, prior=prior, decoder=decoder, defaults=DEFAULTS,
                        fast={"steps": [2, 1], "prior_steps": 2, "sampler": "dpmpp", "spacing": "trailing"})
    pipeline = load_pipeline(folder)
    assert pipeline.resolve(fast=True) == SamplingSettings(cond_scale=(2.0, 1.0), steps=(2, 1), prior_steps=2, sampler="dpmpp",
                                                           spacing="trailing", size=(32, 32))
    assert pipeline.resolve(fast=True, steps=3, sampler="ddim").steps == (3, 3)
    assert pipeline.resolve() == SamplingSettings(cond_scale=(2.0, 1.0), steps=(3, 2), prior_steps=3, sampler="ddim", size=(32, 32))
    with pytest.raises(SettingError, match="this unclip model records no fast settings") as err:
        load_pipeline(model_dir).resolve(fast=True)
    assert err.value.setting == "fast"

    result = dream("--model", folder, "--fast", "--seed", 0, "--outdir", tmp_path / "a", "-q", "a cube")
    assert result.exit_code == 0, result.output
    info = json.loads(read_png_text(tmp_path / "a" / "a-cube-0-0.png")[SETTINGS_CHUNK])
    assert (info["sampler"], info["steps"], info["prior_steps"], info["spacing"]) == ("dpmpp", [2, 1], 2, "trailing")
    result = dream("--model", folder, "--fast", "--sampler", "ddim", "--seed", 0, "--outdir", tmp_path / "b", "-q", "a cube")
    info = json.loads(read_png_text(tmp_path / "b" / "a-cube-0-0.png")[SETTINGS_CHUNK])
    assert (info["sampler"], info["steps"], info["spacing"]) == ("ddim", [2, 1], "trailing")
    refused = dream("--model", model_dir, "--fast", "--outdir", tmp_path / "c", "-q", "a cube")
    assert refused.exit_code == 2 and "--fast" in refused.output and "records no fast settings" in _error_line(refused)
    assert pngs(tmp_path / "c") == []


def test_dream_model_env_is_the_default(model_dir, tmp_path):
    result = dream("--seed", 0, "--outdir", tmp_path, "-q", "env", env={"DREAM_MODEL": str(model_dir)})
    assert result.exit_code == 0, result.output
    assert json.loads(read_png_text(tmp_path / "env-0-0.png")[SETTINGS_CHUNK])["model"] == model_dir.name


def test_the_text_tower_runs_once_per_batch(model_dir, tmp_path, monkeypatch):
    from dalle2_core.clip import XClipAdapter

    calls = []
    original = XClipAdapter._embed_tokens
    monkeypatch.setattr(XClipAdapter, "_embed_tokens", lambda self, tokens: calls.append(len(tokens)) or original(self, tokens))
    assert dream("--model", model_dir, "-n", 3, "--batch-size", 2, "--seed", 1, "--outdir", tmp_path / "a", "-q", "x").exit_code == 0
    assert calls == [2, 1]  # one forward per batch: the prior and the decoder share it
    calls.clear()
    result = dream("interpolate", "a red cube", "a blue ball", "--frames", 3, "--model", model_dir, "--outdir", tmp_path / "b", "-q")
    assert result.exit_code == 0 and calls == [2]  # both ends in one batch
    calls.clear()
    result = dream("eval", "shapes", "--model", model_dir, "--num", 2, "--batch-size", 3, "-q", "--json")
    assert result.exit_code == 0 and calls == [3, 1]


def test_variations_and_interpolation_on_a_text_conditioned_decoder(tmp_path):
    source = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (40, 80, 220)).save(source)
    fast = ("--model", "shapes", "--steps", 2, "--prior-steps", 2, "-q")
    result = dream("--image", source, *fast, "-n", 2, "--seed", 3, "--outdir", tmp_path / "v")
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path / "v") == ["photo-3-0.png", "photo-3-1.png"]
    result = dream("interpolate", source, "a large red circle on the left on a blue background", "--frames", 3, *fast,
                   "--seed", 3, "--outdir", tmp_path / "i")
    assert result.exit_code == 0, result.output
    assert len(pngs(tmp_path / "i")) == 3


def test_non_finite_output_is_refused_and_nothing_is_written(model_dir, tmp_path):
    result = dream("--model", model_dir, "--cond-scale", "1e308", "--seed", 0, "--outdir", tmp_path, "-q", "x")
    assert result.exit_code == 1
    line = _error_line(result)
    assert "the unet 1 stage produced NaN or infinite values; guidance scale 1e+308 is the likely cause" in line
    assert pngs(tmp_path) == []


# A1111's reader (modules/generation_parameters_copypaste.py): the last line holds the pairs
A1111_PAIR = re.compile(r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)""")


def a1111_read(parameters: str) -> tuple[list[str], dict[str, str]]:
    *head, last = parameters.strip().split("\n")
    pairs = {k: json.loads(v) if v.startswith('"') else v for k, v in A1111_PAIR.findall(last)}
    assert len(pairs) >= 3
    return head, pairs


def test_a1111_reader_parses_every_field_even_with_commas_and_colons_in_the_model_name(model_dir, tmp_path):
    odd = copy_model(model_dir, tmp_path / "my, odd: model")
    out = tmp_path / "out"
    assert dream("--model", odd, "--seed", 4, "--outdir", out, "-q", "a cube, red: big").exit_code == 0
    head, pairs = a1111_read(read_png_text(out / "a-cube-red-big-4-0.png")["parameters"])
    assert head == ["a cube, red: big"]
    assert pairs["Model"] == odd.name and pairs["Seed"] == "4" and pairs["Size"] == "32x32" and pairs["Steps"] == "3"
    assert pairs["Sampler"] == "DDIM" and pairs["Version"] == "dream 0.1.0" and len(pairs["Model hash"]) == 10
    assert pairs["Decoder steps"] == "3/2" and pairs["Prior samples"] == "2"
