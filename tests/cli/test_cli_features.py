"""The generation features of `dream`: negative prompts, img2img, inpainting, outpainting, upscale, prompt files,
info / --from, mixes — on the tiny model folder and on the bundled shapes model."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers.cli_helpers import dream
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from dream_cli.output import SETTINGS_CHUNK, read_png_text

SHAPES_FAST = ("--model", "shapes", "--steps", "4,3", "--prior-steps", "4", "-q")
RED_LEFT = "a large red circle on the left on a blue background"


def pixels(path):
    """(h * w, 3) float pixel values."""
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB")).flatten(1).T.float()


def settings(path):
    return json.loads(read_png_text(path)[SETTINGS_CHUNK])


def only_png(folder):
    (path,) = sorted(folder.glob("*.png"))
    return path


def test_negative_prompt_changes_the_image_and_is_recorded(tmp_path):
    assert dream(*SHAPES_FAST, "--seed", 2, "--outdir", tmp_path / "a", RED_LEFT).exit_code == 0
    result = dream(*SHAPES_FAST, "--seed", 2, "--outdir", tmp_path / "b", "--negative-prompt", "a red circle", RED_LEFT)
    assert result.exit_code == 0, result.output
    plain, negative = only_png(tmp_path / "a"), only_png(tmp_path / "b")
    assert (pixels(plain) - pixels(negative)).abs().mean() > 1.0
    assert settings(negative)["negative_prompt"] == "a red circle"
    assert read_png_text(negative)["parameters"].splitlines()[1] == "Negative prompt: a red circle"
    assert "--negative-prompt 'a red circle'" in settings(negative)["command"]


def test_img2img_strength_0_is_skipped_and_strength_changes_the_image(tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (240, 210, 40)).save(source)
    kept = dream(*SHAPES_FAST, "--seed", 1, "--init-image", source, "--strength", 0, "--outdir", tmp_path / "a", RED_LEFT)
    assert kept.exit_code == 0 and "--strength 0 keeps the picture as it is" in kept.stderr and not (tmp_path / "a").exists()
    result = dream(*SHAPES_FAST, "--seed", 1, "--init-image", source, "--strength", 0.7, "--outdir", tmp_path / "b", RED_LEFT)
    assert result.exit_code == 0, result.output
    out = only_png(tmp_path / "b")
    assert (pixels(out) - pixels(source)).abs().mean() > 5
    stored = settings(out)
    assert stored["strength"] == 0.7 and stored["init_image"] == "source.png"
    assert "Denoising strength: 0.7" in read_png_text(out)["parameters"]


def test_inpainting_keeps_the_unmasked_pixels_and_outpainting_grows_the_canvas(tmp_path):
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (40, 80, 220)).save(source)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (32, 0, 64, 64))  # regenerate the right half
    m.save(mask)
    shapes = ("--model", "shapes", "--steps", "4,3", "--prior-steps", "4", "-q", "--seed", 3)
    # the model's default sampler (dpmpp_sde) cannot inpaint: the run takes DDPM and records it
    result = dream(*shapes, "--init-image", source, "--mask", mask, "--outdir", tmp_path / "a", RED_LEFT)
    assert result.exit_code == 0, result.output
    out, src = pixels(only_png(tmp_path / "a")).view(64, 64, 3), pixels(source).view(64, 64, 3)
    assert torch.equal(out[:, :32], src[:, :32]) and settings(only_png(tmp_path / "a"))["sampler"] == "ddpm"
    refused = dream(*shapes, "--init-image", source, "--mask", mask, "--sampler", "dpmpp", "--outdir", tmp_path / "c", RED_LEFT)
    assert refused.exit_code == 2 and "--sampler" in refused.output and "inpainting supports samplers ddpm, ddim" in refused.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    result = dream(*shapes, "--init-image", source, "--outpaint", "left:64", "--outdir", tmp_path / "b", RED_LEFT)
    assert result.exit_code == 0, result.output
    assert settings(only_png(tmp_path / "b"))["outpaint"] == "left:64"
    bad = dream(*shapes, "--init-image", source, "--outpaint", "middle:3", RED_LEFT)
    assert bad.exit_code == 2 and "'middle:3': expected side:pixels pairs" in bad.output


def test_upscale_runs_the_super_resolution_stage_only(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(small)
    result = dream("upscale", small, "--model", "shapes", "--steps", "4,3", "-q", "--seed", 0, "--outdir", tmp_path, "--prompt", RED_LEFT)
    assert result.exit_code == 0, result.output
    out = tmp_path / "small-up-0.png"
    with Image.open(out) as img:
        assert img.size == (64, 64)
    assert settings(out)["source"] == "small.png"
    red = pixels(out).mean(dim=0)
    assert red[0] > 150 and red[1] < 100  # still the red picture, twice the size


def test_prompts_file_with_per_prompt_options_and_rank_shares(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red cube\n\n{"prompt": "a blue ball", "num": 2, "steps": [2, 1]}\n{"prompt": "x", "seed": 40}\n')
    out = tmp_path / "one"
    result = dream("--model", model_dir, "--prompts", prompts, "--seed", 7, "--outdir", out, "-q")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["a-blue-ball-8-0.png", "a-blue-ball-8-1.png", "a-red-cube-7-0.png", "x-40-0.png"]
    assert settings(out / "a-blue-ball-8-1.png")["steps"] == [2, 1] and settings(out / "a-blue-ball-8-1.png")["seed"] == 9
    # two processes (as torchrun starts them) share the prompts and write the files one process writes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2"}
    shared = tmp_path / "shared"
    for rank in (0, 1):
        proc = subprocess.run([sys.executable, "-c", "from dream_cli import main; main()", "--model", str(model_dir), "--prompts",
                               str(prompts), "--seed", "7", "--outdir", str(shared), "-q"], env={**env, "RANK": str(rank)},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in shared.glob("*.png")) == names
    for name in names:
        assert torch.equal(pixels(shared / name), pixels(out / name))
    no_seed = subprocess.run([sys.executable, "-c", "from dream_cli import main; main()", "--model", str(model_dir), "--prompts",
                              str(prompts), "--outdir", str(shared)], env={**env, "RANK": "0"}, capture_output=True, text=True, timeout=60)
    assert no_seed.returncode == 2 and "under torchrun give --seed" in no_seed.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text('{"prompt": "x", "stepz": 3}\n')
    result = dream("--model", model_dir, "--prompts", bad)
    assert result.exit_code == 2 and "bad.txt line 1 has unknown option(s) stepz" in result.output


def test_info_and_from_regenerate_an_image_with_overrides(model_dir, tmp_path):
    assert dream("--model", model_dir, "--seed", 5, "--steps", "2,2", "--outdir", tmp_path / "a", "-q", "a red cube").exit_code == 0
    first = only_png(tmp_path / "a")
    result = dream("info", first)
    assert result.exit_code == 0
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["prompt"] == "a red cube" and lines["seed"] == "5" and lines["steps"] == "2,2"
    assert json.loads(dream("info", "--json", first).stdout)["seed"] == 5
    assert dream("--from", first, "--model", model_dir, "--outdir", tmp_path / "b", "-q").exit_code == 0
    assert torch.equal(pixels(only_png(tmp_path / "b")), pixels(first))  # the same image again
    assert dream("--from", first, "--model", model_dir, "--steps", 3, "--outdir", tmp_path / "c", "-q").exit_code == 0
    again = only_png(tmp_path / "c")
    assert settings(again)["steps"] == [3, 3] and settings(again)["seed"] == 5
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result = dream("info", plain)
    assert result.exit_code == 2 and "holds no dream settings" in result.output


def test_mix_of_a_prompt_and_an_image(model_dir, tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    result = dream("mix", "a red cube:0.7", f"{image}:0.3", "--model", model_dir, "--seed", 1, "-n", 2, "--outdir", tmp_path / "m", "-q")
    assert result.exit_code == 0, result.output
    paths = sorted((tmp_path / "m").glob("*.png"))
    assert len(paths) == 2 and settings(paths[0])["mix"] == ["a red cube:0.7", "photo.png:0.3"]
    bad = dream("mix", "a red cube:0", "--model", model_dir)
    assert bad.exit_code == 2 and "with a weight > 0" in bad.output


@pytest.fixture(scope="module")
def laion_model(tmp_path_factory):
    """The LAION fixture (DALLE2-pytorch 1.1.0 prior, decoder and upsampler at toy widths) converted with a tiny CLIP."""
    from pathlib import Path

    from dalle2_core.clip import CLIP
    from dalle2_core.families.unclip.laion import convert_laion

    fixtures = Path(__file__).parents[1] / "fixtures" / "laion"
    files = {n: fixtures / f"{n}.{'json' if n.endswith('config') else 'pth'}"
             for n in ("prior", "prior_config", "decoder", "upsampler", "upsampler_config")}
    torch.manual_seed(0)
    clip = CLIP(dim_text=16, dim_image=16, dim_latent=16, num_text_tokens=49408, text_enc_depth=1, text_seq_len=6,
                text_heads=2, visual_enc_depth=1, visual_image_size=16, visual_patch_size=8, visual_heads=2)
    return convert_laion(files, tmp_path_factory.mktemp("laion") / "model", clip=clip).path


def test_every_feature_on_a_converted_laion_model(laion_model, tmp_path):
    fast = ("--model", laion_model, "--steps", "3,2", "--prior-steps", "3", "--sampler", "ddim", "-q", "--seed", 4)
    assert dream(*fast, "--outdir", tmp_path / "plain", "a red cube").exit_code == 0
    plain = only_png(tmp_path / "plain")
    size = Image.open(plain).size
    result = dream(*fast, "--outdir", tmp_path / "neg", "--negative-prompt", "a blue ball", "a red cube")
    assert result.exit_code == 0, result.output
    negative = only_png(tmp_path / "neg")
    assert (pixels(negative) - pixels(plain)).abs().mean() > 0.5 and settings(negative)["negative_prompt"] == "a blue ball"
    source = tmp_path / "source.png"
    Image.new("RGB", size, (40, 170, 60)).save(source)
    assert dream(*fast, "--init-image", source, "--strength", 0.01, "--outdir", tmp_path / "same", "a red cube").exit_code == 0
    assert (pixels(only_png(tmp_path / "same")) - pixels(source)).abs().max() <= 3  # 1% of the schedule redrawn: almost the source
    mask = tmp_path / "mask.png"
    m = Image.new("L", size, 0)
    m.paste(255, (0, 0, size[0] // 2, size[1]))  # regenerate the left half
    m.save(mask)
    assert dream(*fast, "--init-image", source, "--mask", mask, "--outdir", tmp_path / "inpaint", "a red cube").exit_code == 0
    out, src = pixels(only_png(tmp_path / "inpaint")).view(size[1], size[0], 3), pixels(source).view(size[1], size[0], 3)
    assert torch.equal(out[:, size[0] // 2:], src[:, size[0] // 2:])
    result = dream("upscale", plain, "--model", laion_model, "--steps", "3,2", "-q", "--seed", 0, "--outdir", tmp_path / "up",
                   "--prompt", "a red cube")
    assert result.exit_code == 0, result.output
    assert Image.open(only_png(tmp_path / "up")).size == size


def test_spacing_is_a_setting_recorded_in_the_image_and_regenerated_from_it(tmp_path):
    prompt = "a large red circle on the left on a blue background"
    assert dream(*SHAPES_FAST, "--spacing", "karras", "--seed", "3", "--outdir", tmp_path / "k", prompt).exit_code == 0
    assert dream(*SHAPES_FAST, "--spacing", "uniform", "--seed", "3", "--outdir", tmp_path / "u", prompt).exit_code == 0
    karras, uniform = next((tmp_path / "k").glob("*.png")), next((tmp_path / "u").glob("*.png"))
    text = read_png_text(karras)
    assert "Schedule type: Karras" in text["parameters"] and json.loads(text[SETTINGS_CHUNK])["spacing"] == "karras"
    assert "Schedule type: Uniform" in read_png_text(uniform)["parameters"]
    pixels = lambda path: pil_to_tensor(Image.open(path))  # noqa: E731
    assert not torch.equal(pixels(karras), pixels(uniform))  # other timesteps, another image
    assert dream("--from", karras, "-q", "--outdir", tmp_path / "again").exit_code == 0
    assert torch.equal(pixels(next((tmp_path / "again").glob("*.png"))), pixels(karras))
    bad = dream(*SHAPES_FAST, "--spacing", "cosine", prompt)
    assert bad.exit_code == 2 and "'cosine' is not one of 'uniform', 'leading', 'trailing', 'karras'" in bad.output
