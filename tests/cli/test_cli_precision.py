"""Every command in every precision the CPU accepts: bf16 weights meet pictures read as float32 at the pipeline's
door (img2img, inpainting, outpainting, upscale), and each path writes a finite picture."""

import json

import numpy as np
import pytest
from helpers.cli_helpers import dream
from PIL import Image

from dream_cli.output import SETTINGS_CHUNK, read_png_text

FAST = ("--model", "shapes", "--steps", "2,2", "--prior-steps", "2", "--seed", 1, "-q")
PROMPT = "a large red circle on the left on a blue background"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    Image.new("RGB", (64, 64), (40, 80, 220)).save(folder / "source.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(folder / "mask.png")
    Image.new("RGB", (32, 32), (220, 40, 40)).save(folder / "small.png")
    return folder


COMMANDS = {
    "generate": [PROMPT],
    "img2img": ["--init-image", "source.png", "--strength", "0.6", PROMPT],
    "inpaint": ["--init-image", "source.png", "--mask", "mask.png", PROMPT],
    "outpaint": ["--init-image", "source.png", "--outpaint", "left:16", PROMPT],
    "variations": ["--image", "source.png"],
    "upscale": ["upscale", "small.png"],
    "mix": ["mix", f"{PROMPT}:0.6", "source.png:0.4"],
    "interpolate": ["interpolate", PROMPT, "source.png", "--frames", "2"],
}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_runs_in_every_cpu_precision(pictures, tmp_path, command, precision):
    args = [str(pictures / a) if a in ("source.png", "mask.png", "small.png") else
            f"{pictures / 'source.png'}:0.4" if a == "source.png:0.4" else a for a in COMMANDS[command]]
    if args[0] in ("upscale", "mix", "interpolate"):
        args = [args[0], *FAST, "--precision", precision, "--outdir", tmp_path, *args[1:]]
    else:
        args = [*FAST, "--precision", precision, "--outdir", tmp_path, *args]
    result = dream(*args)
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("*.png"))
    assert written, result.output
    for path in written:
        assert json.loads(read_png_text(path)[SETTINGS_CHUNK])["precision"] == precision
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 0 or command == "upscale"  # a picture, not a blank
