"""Pictures as people have them: every Pillow mode a user may hand `dream` is read as the colours it shows, or
refused by name; alpha is composited on white; EXIF orientation is applied. Files that other programs write and
Pillow cannot (16-bit PNGs, a CMYK JPEG) come from tests/fixtures/image_modes (written by ImageMagick)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli_helpers import dream
from PIL import Image

from dream_cli.pictures import as_rgb, load_image, load_mask

FIXTURES = Path(__file__).parents[1] / "fixtures" / "image_modes"
RED, BLUE = (200, 40, 40), (40, 80, 220)


def colour(picture, x, y):
    """The (r, g, b) levels 0..255 of one pixel of a (1, 3, h, w) picture."""
    return tuple(round(v) for v in (picture[0, :, y, x] * 255).tolist())


def close(a, b, tol=3):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_16_bit_greyscale_is_its_grey_not_white():
    picture = load_image(FIXTURES / "gray16.png")
    assert picture.shape == (1, 3, 8, 16)
    assert close(colour(picture, 0, 0), (64, 64, 64)) and close(colour(picture, 15, 0), (191, 191, 191))


def test_16_bit_rgb_and_cmyk_are_their_colours():
    rgb = load_image(FIXTURES / "rgb16.png")
    assert close(colour(rgb, 0, 0), RED) and close(colour(rgb, 15, 7), BLUE)
    cmyk = load_image(FIXTURES / "cmyk.jpg")
    assert close(colour(cmyk, 0, 0), RED, tol=20) and close(colour(cmyk, 15, 7), BLUE, tol=20)


def test_16_bit_alpha_is_composited_on_white():
    picture = load_image(FIXTURES / "rgba16.png")  # left half transparent, right half opaque
    assert close(colour(picture, 0, 0), (255, 255, 255)) and close(colour(picture, 15, 0), BLUE)


def _saved(tmp_path, image: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode, value, expected", [
    ("1", 1, (255, 255, 255)),
    ("L", 100, (100, 100, 100)),
    ("I;16", 65535 // 4, (64, 64, 64)),
    ("I", 30000, (117, 117, 117)),  # 32-bit integer pixels in the 16-bit range (as 16-bit files open)
    ("F", 0.5, (128, 128, 128)),  # floating point in [0, 1]
    ("YCbCr", Image.new("RGB", (1, 1), RED).convert("YCbCr").getpixel((0, 0)), RED),
    ("RGB", RED, RED),
])
def test_opaque_modes(tmp_path, mode, value, expected):
    suffix = {"I": ".tif", "F": ".tif", "YCbCr": ".jpg"}.get(mode, ".png")
    path = _saved(tmp_path, Image.new(mode, (8, 8), value), f"x{suffix}", **({"quality": 100} if suffix == ".jpg" else {}))
    picture = load_image(path)
    assert picture.shape == (1, 3, 8, 8) and picture.dtype == torch.float32
    assert close(colour(picture, 4, 4), expected, tol=6 if suffix == ".jpg" else 1)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P-transparent"])
def test_transparent_pixels_are_white_and_opaque_ones_keep_their_colour(tmp_path, mode):
    rgba = Image.new("RGBA", (8, 8), (*RED, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))  # left half fully transparent (its colour black)
    if mode == "LA":
        image, opaque = rgba.convert("LA"), (round(RED[0] * 0.299 + RED[1] * 0.587 + RED[2] * 0.114),) * 3
    elif mode == "P-transparent":  # a palette image with a transparent index (tRNS), as GIFs and small PNGs have
        image, opaque = rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=4), RED
        image.info["transparency"] = image.getpixel((0, 0))
    else:
        image, opaque = rgba, RED
    path = _saved(tmp_path, image, "x.png", **({"transparency": image.info["transparency"]} if mode == "P-transparent" else {}))
    picture = load_image(path)
    assert close(colour(picture, 1, 1), (255, 255, 255)) and close(colour(picture, 6, 6), opaque, tol=2)


def test_palette_with_alpha_in_memory():
    # Pillow writes no PA files, but other readers hand such images over: the same rule applies
    rgba = Image.new("RGBA", (8, 8), (*RED, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))
    image = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4).convert("PA")
    image.putalpha(rgba.getchannel("A"))
    rgb = as_rgb(image, Path("pa.png"), "--image")
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (255, 255, 255) and close(rgb.getpixel((6, 6)), RED, tol=2)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (16, 8), RED)
    image.paste(BLUE, (8, 0, 16, 8))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown 8 wide, 16 high, red on top
    path = _saved(tmp_path, image, "phone.jpg", exif=exif, quality=95)
    picture = load_image(path)
    assert picture.shape == (1, 3, 16, 8)
    assert close(colour(picture, 4, 2), RED, tol=12) and close(colour(picture, 4, 13), BLUE, tol=12)


@pytest.mark.parametrize("mode, values, fragment", [
    ("F", np.full((8, 8), 300.0, dtype=np.float32), "mode F"),
    ("I", np.full((8, 8), -5, dtype=np.int32), "mode I"),
])
def test_pixels_of_no_defined_range_are_refused_by_name(tmp_path, mode, values, fragment):
    path = _saved(tmp_path, Image.fromarray(values), "odd.tif")
    assert Image.open(path).mode == mode
    result = dream("upscale", path, "--model", "shapes")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "odd.tif" in line and fragment in line and "IMAGES" in line


def test_lab_is_refused_by_name(tmp_path):
    path = _saved(tmp_path, Image.new("LAB", (8, 8), (50, 60, 70)), "lab.tif")
    result = dream("--model", "shapes", "--init-image", path, "x")
    assert result.exit_code == 2 and "lab.tif" in result.output and "mode LAB" in result.output


def test_mask_alpha_transparent_means_regenerate(tmp_path):
    like = torch.zeros(1, 3, 8, 8)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))  # opaque black: keep
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))  # transparent left half: regenerate
    region, note = load_mask(_saved(tmp_path, rgba, "mask.png"), like)
    assert region[0, :, :4].all() and not region[0, :, 4:].any() and note is None


def test_a_16_bit_init_image_is_sampled_from_its_grey(tmp_path):
    out = tmp_path / "out"
    result = dream("--model", "shapes", "--steps", "2,2", "--prior-steps", "2", "-q", "--seed", 1, "--init-image",
                   FIXTURES / "gray16.png", "--strength", "0.05", "--outdir", out, "a red circle")
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.png")
    with Image.open(path) as img:
        mean = np.asarray(img.convert("L"), dtype=np.float32).mean()
    assert mean < 200  # the picture is mid-grey (a quarter dark, three quarters light), not pure white
