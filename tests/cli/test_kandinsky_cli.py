"""The command line on a Kandinsky 2.2 model folder: `dream convert diffusers` on the diffusers-written tiny folders, then
every command that samples it (text to image, negative prompt, sizes, img2img, inpainting, variations, mix, interpolate,
bf16), what it refuses in one line, and the line that says how long a CPU run takes."""

import json

import pytest
import torch
from click.testing import CliRunner
from fixtures.kandinsky import loader as kf
from PIL import Image

from dream_cli.cli import cli
from dream_cli.output import SETTINGS_CHUNK, read_png_text
from dream_cli.sampling import Estimate, Progress

FAST = ("--steps", "2", "--prior-steps", "2", "--seed", "3", "-q")


def dream(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def settings(png) -> dict:
    return json.loads(read_png_text(png)[SETTINGS_CHUNK])


def size_of(png) -> tuple[int, int]:
    with Image.open(png) as image:
        return image.size


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("kandinsky") / "model"
    result = dream("convert", "diffusers", kf.DECODER, kf.PRIOR, "--inpaint", kf.INPAINT, "--out", out)  # either order
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["clip", "decoder", "decoder_inpaint", "image_encoder", "model_index.json", "prior"]
    return out


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((torch.rand(20, 30, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(path)
    return path


@pytest.mark.parametrize("args,message", [
    ((kf.PRIOR,), "a Kandinsky 2.2 model is converted from its prior folder (KandinskyV22PriorPipeline) and its decoder folder"),
    ((kf.PRIOR, kf.DECODER, "--image-variations", kf.PRIOR), "a picture encoder folder applies to UnCLIPPipeline (Karlo) models"),
    ((kf.INPAINT,), "is a KandinskyV22InpaintPipeline folder; accepted: KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline, "
                    "KandinskyV22PriorPipeline, UnCLIPPipeline"),
])
def test_convert_diffusers_refuses_in_one_line(tmp_path, args, message):
    result = dream("convert", "diffusers", *args, "--out", tmp_path / "m")
    assert result.exit_code in (1, 2) and message in result.output
    assert result.output.count("Error") == 1 and not (tmp_path / "m").exists()


def test_text_to_image_with_a_negative_prompt_and_a_size(model, tmp_path):
    result = dream("--model", model, "a red cat", *FAST, "-n", "2", "--negative-prompt", "blurry", "--size", "24x16", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    pngs = sorted(tmp_path.glob("a-red-cat-3-*.png"))
    assert len(pngs) == 2 and {size_of(p) for p in pngs} == {(24, 16)}
    info = settings(pngs[1])
    assert (info["negative_prompt"], info["size"], info["seed"], info["steps"]) == ("blurry", [24, 16], 4, [2])
    assert info["model_hash"] and info["model_source"] == "local" and info["model"] == "model"
    # --from regenerates the second image alone, its size included
    again = dream("--from", pngs[1], "--model", model, "--outdir", tmp_path / "again", "-q")
    assert again.exit_code == 0, again.output
    regenerated = tmp_path / "again" / "a-red-cat-4-0.png"
    assert size_of(regenerated) == (24, 16)
    with Image.open(regenerated) as a, Image.open(pngs[1]) as b:
        diff = (torch.tensor(list(a.convert("RGB").tobytes())).float() - torch.tensor(list(b.convert("RGB").tobytes())).float()).abs()
    assert diff.max() <= 1  # the same image (8-bit rounding of float noise across batch sizes at most)


@pytest.mark.parametrize("size", ["20x16", "16x40", "16", "0x16"])
def test_a_size_the_model_does_not_make_is_one_line(model, tmp_path, size):
    result = dream("--model", model, "a red cat", *FAST, "--size", size, "--outdir", tmp_path)
    assert result.exit_code == 2 and "--size" in result.output
    accepted = "multiples of 8 from 8 to 32 per side" if size[0] != "0" and "x" in size else "WIDTHxHEIGHT"
    assert accepted in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.png"))


def test_img2img_and_inpainting(model, tmp_path, picture):
    result = dream("--model", model, "a red cat", *FAST, "--init-image", picture, "--strength", "0.5", "--outdir", tmp_path / "img2img")
    assert result.exit_code == 0, result.output
    png = next((tmp_path / "img2img").glob("*.png"))
    assert size_of(png) == (16, 16) and settings(png)["strength"] == 0.5
    mask = tmp_path / "mask.png"
    white = torch.zeros(20, 30, dtype=torch.uint8)
    white[5:15, 10:20] = 255
    Image.fromarray(white.numpy(), mode="L").save(mask)
    result = dream("--model", model, "a hat", *FAST, "--init-image", picture, "--mask", mask, "--outdir", tmp_path / "inpaint")
    assert result.exit_code == 0, result.output
    assert settings(next((tmp_path / "inpaint").glob("*.png")))["mask"] == "mask.png"
    result = dream("--model", model, "a hat", *FAST, "--init-image", picture, "--outpaint", "left:8", "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_variations_mix_and_interpolate(model, tmp_path, picture):
    result = dream("--model", model, "--image", picture, *FAST, "-n", "2", "--outdir", tmp_path / "var")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "var").glob("*.png"))) == 2
    result = dream("mix", "a red cat:0.6", f"{picture}:0.4", "--model", model, *FAST, "--outdir", tmp_path / "mix")
    assert result.exit_code == 0, result.output
    result = dream("interpolate", "a red cat", picture, "--frames", "3", "--model", model, *FAST, "--outdir", tmp_path / "lerp")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "lerp").glob("*.png"))) == 3


def test_bf16_on_the_cpu(model, tmp_path):
    result = dream("--model", model, "a red cat", *FAST, "--precision", "bf16", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert settings(next(tmp_path.glob("*.png")))["precision"] == "bf16"


def test_upscale_is_refused_in_one_line(model, tmp_path, picture):
    result = dream("upscale", picture, "--model", model, *FAST, "--outdir", tmp_path)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "the kandinsky family has no separate super-resolution stages to run" in result.output


def test_a_lone_prior_folder_as_a_model_says_how_to_convert_the_pair(tmp_path):
    result = dream("--model", kf.PRIOR, "a red cat", *FAST, "--outdir", tmp_path)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "is a KandinskyV22PriorPipeline folder, half of a Kandinsky 2.2 model" in result.output
    assert result.output.rstrip().endswith("; convert the pair with: dream convert diffusers PRIOR DECODER --out DIR")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_cpu_run_says_how_long_it_will_take_after_timing_the_first_decoder_step(capsys):
    clock = Clock()
    stages = [("prior", 25), ("decoder", 100)]
    with Progress(False, stages, {"prior": 2, "decoder": 2}, Estimate("decoder", "--model karlo, or fewer --steps"), clock) as progress:
        for i in range(25):
            clock.now += 0.1
            progress("prior", i, 25)
        clock.now += 4.5  # the first decoder step (and the run's one-off conditioning)
        progress("decoder", 0, 100)
        clock.now += 4.5
        progress("decoder", 1, 100)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("Note:")]
    assert lines == ["Note: on this CPU the decoder takes 4.5 s a step: about 15 min for 100 steps x 2 batches; "
                     "faster: --model karlo, or fewer --steps"]


def test_a_short_run_says_nothing(capsys):
    clock = Clock()
    with Progress(False, [("decoder", 10)], {"decoder": 1}, Estimate("decoder", "fewer --steps"), clock) as progress:
        clock.now += 1.0
        progress("decoder", 0, 10)
    assert "Note:" not in capsys.readouterr().err
