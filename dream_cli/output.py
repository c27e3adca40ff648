"""Writing generated images: file names, PNG metadata (A1111 `parameters` + `dream` JSON), grids."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path

import click
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle2_core.atomic import atomic_path
from dream_cli.errors import DreamError, one_line

SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM++ 2M", "dpmpp_sde": "DPM++ 2M SDE"}  # as A1111 readers expect them


def slugify(text: str, max_len: int = 48) -> str:
    """A file-name-safe, lower-case stem from a prompt ("image" when nothing is left)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "image"


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (c, h, w) tensor in [0, 1] as an 8-bit PIL image (c = 1, 3 or 4), rounded to the nearest level."""
    from torchvision.transforms.functional import to_pil_image

    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image tensor (1|3|4, h, w), got shape {tuple(image.shape)}")
    return to_pil_image((image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())


def make_grid(images: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) images tiled row-major into one (c, rows*h, cols*w) image, cols = ceil(sqrt(b)), black padding."""
    from torchvision.utils import make_grid as tile

    return tile(images, nrow=math.ceil(math.sqrt(images.shape[0])), padding=0)


# A decoded RGB image this large is ~150 MB; bigger ones are refused (JPEGs are reduced while decoding instead).
MAX_IMAGE_PIXELS = 50_000_000
MAX_SIDE = 2048  # images are read at most this large: CLIP and the decoders work far below it


def load_image(path: Path, option: str = "--image") -> torch.Tensor:
    """An image file as a (1, 3, h, w) float tensor in [0, 1], read within bounded memory."""
    from PIL import UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is checked here, before decoding
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == "JPEG":
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale when that is enough
            elif w * h > MAX_IMAGE_PIXELS:
                raise click.BadParameter(
                    f"{str(path)!r} is {w}x{h} ({w * h / 1e6:.0f} MP); images up to {MAX_IMAGE_PIXELS / 1e6:.0f} MP "
                    "are accepted (or JPEGs of any size)", param_hint=option)
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise click.BadParameter(f"{str(path)!r} is not a readable image ({one_line(err)})", param_hint=option) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
    return pil_to_tensor(rgb)[None].float() / 255  # (1, 3, h, w)


def _join(values) -> str:
    # A1111 readers split fields on commas, so per-unet values are joined with '/'
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def a1111_parameters(prompt: str, info: dict) -> str:
    """The `parameters` text A1111-compatible readers parse: prompt line, then `Key: value, ...`."""
    steps, scales = info["steps"], info["cond_scale"]
    fields = {
        "Steps": steps[0],
        "Sampler": SAMPLER_NAMES.get(info["sampler"], info["sampler"]),
        "CFG scale": f"{scales[0]:g}",
        "Seed": info["seed"],
        "Size": f"{info['size'][0]}x{info['size'][1]}",
        "Model": info["model"],
    }
    if len(steps) > 1 or len(scales) > 1:
        fields["Decoder steps"] = _join(steps)
        fields["Decoder CFG scale"] = _join(scales)
    if info.get("prior_steps") is not None:
        fields["Prior steps"] = info["prior_steps"]
        fields["Prior CFG scale"] = f"{info['prior_cond_scale']:g}"
        fields["Prior samples"] = info["prior_samples"]
    if info.get("model_revision"):
        fields["Model hash"] = info["model_revision"][:10]
    return prompt + "\n" + ", ".join(f"{k}: {v}" for k, v in fields.items())


def _candidates(outdir: Path, stem: str):
    yield outdir / f"{stem}.png"
    n = 1
    while True:
        yield outdir / f"{stem}_{n}.png"
        n += 1


def save_png(image: torch.Tensor, outdir: Path, stem: str, text: dict[str, str]) -> Path:
    """Write `image` as `{stem}.png` (or `{stem}_1.png`, ... if taken) with tEXt chunks; never overwrites.

    The file appears complete or not at all (temporary file, then a no-overwrite rename).
    """
    pil = to_pil(image)
    meta = PngInfo()
    for key, value in text.items():
        meta.add_text(key, value)
    for path in _candidates(outdir, stem):
        if path.exists():
            continue
        try:
            with atomic_path(path, overwrite=False) as tmp:
                pil.save(tmp, format="PNG", pnginfo=meta)
            return path
        except FileExistsError:  # taken between the check and the rename: try the next name
            continue
        except OSError as err:  # full disk, lost permissions: say which file, nothing is left behind
            raise DreamError(f"cannot write {str(path)!r}: {err.strerror or one_line(err)}") from None
    raise AssertionError("unreachable")


def png_text(prompt: str, info: dict) -> dict[str, str]:
    """The two tEXt chunks: A1111 `parameters` and `dream` (JSON with everything to regenerate)."""
    return {"parameters": a1111_parameters(prompt, info), "dream": json.dumps({"prompt": prompt, **info})}


def read_png_text(path: str | Path) -> dict[str, str]:
    """The tEXt chunks of a PNG (for checking what `save_png` wrote)."""
    with Image.open(path) as img:
        img.load()
        return dict(img.text)
