"""Pictures as the colours they show, whatever Pillow mode their file opens in.

Read as 8-bit RGB: 16-bit and 32-bit integer greyscale is scaled from the 16-bit range 0..65535, floating-point
greyscale is taken in [0, 1], palettes are expanded, EXIF orientation is applied, and alpha (or a transparent
palette index) is composited on white. A mode with no defined mapping to colours (LAB, HSV, out-of-range
integer or float pixels) raises `UnreadablePicture` naming the mode.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

PLAIN_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr")  # converted by Pillow as they are
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")  # composited on BACKGROUND
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # scaled from their range
BACKGROUND = (255, 255, 255)
ACCEPTED = "RGB, CMYK, YCbCr, greyscale (1, 8, 16 or 32 bit, or floating point in [0, 1]), palette, and those with alpha"


class UnreadablePicture(ValueError):
    """A picture whose pixels have no defined colours (its mode, or values outside the range of its mode)."""


def _wide_grey(img: Image.Image) -> Image.Image:
    values = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise UnreadablePicture(f"has floating-point pixels (mode F) from {values.min():g} to {values.max():g}; floating-point "
                                    "greyscale is read in [0, 1] only (save it as an 8- or 16-bit image)")
        scale = 255.0
    else:  # I;16 is 0..65535; a 32-bit I image is read so too when it holds that range (as 16-bit files open)
        if values.min() < 0 or values.max() > 65535:
            raise UnreadablePicture(f"has 32-bit integer pixels (mode I) from {values.min()} to {values.max()}, outside the 16-bit "
                                    "range 0..65535 they are read in (save it as an 8- or 16-bit image)")
        scale = 255.0 / 65535.0
    return Image.fromarray(np.rint(values.astype(np.float32) * scale).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB showing what a viewer shows (EXIF orientation applied, alpha on white)."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in WIDE_GREY_MODES:
        return _wide_grey(img).convert("RGB")
    if mode in ALPHA_MODES or (mode in PLAIN_MODES and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    if mode in PLAIN_MODES:
        return img.convert("RGB")
    raise UnreadablePicture(f"has pixels of mode {mode}, which have no defined colours here; accepted: {ACCEPTED}")


__all__ = ["BACKGROUND", "UnreadablePicture", "to_rgb"]
