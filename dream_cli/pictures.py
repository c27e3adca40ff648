"""Reading what a user hands `dream`: regular files only (a FIFO or a device would block), and pictures in every
mode people have them, as the colours they show.

A picture is read as the colours a viewer shows (`dalle2_core.data.pictures`: 16-bit greyscale from its range,
EXIF orientation applied, alpha composited on white, so a mask's transparent pixels mean "regenerate" as its white
ones do); a mode with no defined colours is a usage error naming it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dream_cli.errors import one_line

if TYPE_CHECKING:
    import torch
    from PIL import Image

# A decoded RGB image this large is ~150 MB; bigger ones are refused (JPEGs are reduced while decoding instead).
MAX_IMAGE_PIXELS = 50_000_000
MAX_SIDE = 2048  # images are read at most this large: CLIP and the decoders work far below it
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_regular_file(path: str | os.PathLike, option: str) -> Path:
    """`path` if it is a regular file (or a link to one); anything else is a usage error naming it and what it is."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise click.BadParameter(f"{str(path)!r} does not exist", param_hint=option) from None
    except OSError as err:
        raise click.BadParameter(f"cannot read {str(path)!r}: {err.strerror or one_line(err)}", param_hint=option) from None
    if stat.S_ISDIR(mode):
        raise click.BadParameter(f"{str(path)!r} is a folder; give a file", param_hint=option)
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise click.BadParameter(f"{str(path)!r} is {kind}; dream reads regular files only", param_hint=option)
    return path


class InputFile(click.Path):
    """A click path that must be a regular file (or `-` for standard input, where `allow_dash`)."""

    def __init__(self, allow_dash: bool = False):
        super().__init__(path_type=Path, dir_okay=False, allow_dash=allow_dash)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if self.allow_dash and str(path) == "-":
            return path
        hint = param.get_error_hint(ctx) if param is not None and ctx is not None else None
        return check_regular_file(path, hint or "file")


def as_rgb(img: Image.Image, name: str, option: str) -> Image.Image:
    """`img` as 8-bit RGB (`dalle2_core.data.pictures.to_rgb`); a mode with no defined colours is a usage error."""
    from dalle2_core.data.pictures import UnreadablePicture, to_rgb

    try:
        return to_rgb(img)
    except UnreadablePicture as err:
        raise click.BadParameter(f"{name!r} {err}", param_hint=option) from None


def load_image(path: Path, option: str = "--image") -> torch.Tensor:
    """An image file as a (1, 3, h, w) float tensor in [0, 1], read within bounded memory."""
    return decode_image(check_regular_file(path, option), str(path), option)


def decode_image(source, name: str, option: str) -> torch.Tensor:
    """An image from `source` (a path or a binary file object; messages call it `name`) as (1, 3, h, w) in [0, 1]:
    its size checked before decoding, JPEGs reduced while decoding, at most `MAX_SIDE` wide."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is checked here, before decoding
    try:
        with Image.open(source) as img:
            w, h = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale when that is enough
            elif w * h > MAX_IMAGE_PIXELS:
                raise click.BadParameter(f"{name!r} is {w}x{h} ({w * h / 1e6:.0f} MP); images up to "
                                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP are accepted (or JPEGs of any size)", param_hint=option)
            img.load()
            rgb = as_rgb(img, name, option)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise click.BadParameter(f"{name!r} is not a readable image ({one_line(err)})", param_hint=option) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
    return pil_to_tensor(rgb)[None].float() / 255  # (1, 3, h, w)


def file_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as shown (EXIF rotations swap them), read from its header only."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


def load_mask(path: Path, like: torch.Tensor, option: str = "--mask") -> tuple[torch.Tensor, str | None]:
    """A mask image as (1, h, w) bool, True = regenerate (white or transparent), at the size of the image `like`
    (1, c, h, w); and a note when it had to be resized to that size."""
    return mask_of(load_image(path, option=option), like, path.name)


def mask_of(picture: torch.Tensor, like: torch.Tensor, name: str) -> tuple[torch.Tensor, str | None]:
    """A decoded mask picture (1, 3, h, w) as (1, h, w) bool, True = regenerate, at `like`'s size (and the note)."""
    import torch

    gray = picture.mean(dim=1)  # (1, h, w)
    note = None
    if gray.shape[-2:] != like.shape[-2:]:
        (h, w), (th, tw) = gray.shape[-2:], like.shape[-2:]
        note = f"the mask {name!r} is {w}x{h} and the image {tw}x{th}: the mask was stretched to the image's size"
        gray = torch.nn.functional.interpolate(gray[None], size=like.shape[-2:], mode="nearest")[0]
    return gray > 0.5, note


__all__ = [
    "MAX_IMAGE_PIXELS", "MAX_SIDE", "InputFile", "as_rgb", "check_regular_file", "decode_image", "file_size", "load_image", "load_mask",
    "mask_of",
]
