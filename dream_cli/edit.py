"""`--init-image` with `--strength`, `--mask` or `--outpaint`: read, checked and bounded before any model loads.

Outpainting grows the picture by PX of its own pixels on each named side, then to a square (mid-grey where new);
that canvas is fitted to the run's output size like every start picture (the side that fits, centre crop), so the
picture shrinks within the output while the new area is drawn around it. Each axis may grow to at most `MAX_GROWTH`
times the picture's side, so the picture keeps at least a quarter of the output's width and height.

An edit that leaves nothing to draw (`--strength 0`, an all-black mask, `--outpaint` that adds no pixels) is said
and skipped (`NothingToDo`): no model is loaded and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click

from dream_cli.pictures import load_image, load_mask

if TYPE_CHECKING:
    import torch

MAX_GROWTH = 4
SIDES = ("left", "right", "top", "bottom")


class NothingToDo(Exception):
    """An edit whose result is its picture unchanged; the message says why."""


class EditSource(NamedTuple):
    """An --init-image read from disk (and its mask), what the metadata records and the regenerate command repeats."""

    image: torch.Tensor  # (1, 3, h, w) in [0, 1]
    mask: torch.Tensor | None  # (1, h, w) bool, True = regenerate
    strength: float
    metadata: dict
    args: list[str]
    notes: list[str]


def parse_outpaint(spec: str, width: int, height: int) -> dict[str, int]:
    """`left:32,top:16` -> {"left": 32, "top": 16}: pixels to add on each named side, bounded by `MAX_GROWTH`."""
    sides, accepted = {}, "side:pixels pairs such as left:32,top:16 (sides left, right, top, bottom)"
    for part in spec.split(","):
        side, _, amount = part.strip().partition(":")
        if side not in SIDES or not amount.isdigit() or side in sides:
            raise click.BadParameter(f"{spec!r}: expected {accepted}", param_hint="--outpaint")
        sides[side] = int(amount)
    for axis, (a, b), side in (("across", ("left", "right"), width), ("down", ("top", "bottom"), height)):
        added, limit = sides.get(a, 0) + sides.get(b, 0), (MAX_GROWTH - 1) * side
        if added > limit:
            raise click.BadParameter(
                f"{spec!r} adds {added} px {axis} to the {width}x{height} picture; at most {limit} px ({a} + {b}) fit, so that "
                f"the picture keeps at least a quarter of the canvas, which is sampled at the model's size", param_hint="--outpaint")
    return sides


def outpaint(image: torch.Tensor, mask: torch.Tensor | None, sides: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The image grown by `sides` pixels and then to a square (mid-grey where new), and its mask: new = regenerate."""
    import torch

    _, _, h, w = image.shape
    left, right, top, bottom = (sides.get(k, 0) for k in SIDES)
    grow_w, grow_h = max(0, h + top + bottom - (w + left + right)), max(0, w + left + right - (h + top + bottom))
    left, right = left + grow_w // 2, right + grow_w - grow_w // 2
    top, bottom = top + grow_h // 2, bottom + grow_h - grow_h // 2
    pad = (left, right, top, bottom)
    grown = torch.nn.functional.pad(image, pad, value=0.5)
    known = torch.zeros(1, h, w, dtype=torch.bool) if mask is None else mask
    return grown, torch.nn.functional.pad(known, pad, value=True)


def fit_picture(image: torch.Tensor, mask: torch.Tensor | None, size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`image` (1, c, h, w) and its mask resized to `size` (a side, or (width, height)) as CLIP does it (the side that
    fits, centre crop)."""
    size = (size[1], size[0]) if isinstance(size, tuple) else size  # (height, width)
    from dalle2_core.clip import resize_center_crop

    out = resize_center_crop(image, size).clamp(0, 1)
    if mask is None:
        return out, None
    return out, resize_center_crop(mask[None].float(), size, mode="bilinear")[0] > 0.5


def read_edit(init_image: Path | None, strength: float | None, mask: Path | None, outpaint_spec: str | None,
              image: Path | None) -> EditSource | None:
    """--init-image with --strength, --mask or --outpaint, checked and read before any model is loaded."""
    if init_image is None:
        if strength is not None or mask is not None or outpaint_spec is not None:
            raise click.UsageError("--strength, --mask and --outpaint need --init-image")
        return None
    if image is not None:
        raise click.UsageError("--image (variations) and --init-image (editing) cannot be combined")
    if strength is not None and (mask is not None or outpaint_spec is not None):
        raise click.UsageError("--strength is for img2img; inpainting and outpainting (--mask, --outpaint) re-draw the masked area fully")
    picture = load_image(init_image, option="--init-image")
    region, note = load_mask(mask, picture) if mask is not None else (None, None)
    if region is not None and not region.any():
        raise NothingToDo(f"the mask {mask.name!r} is all black: nothing to regenerate (white or transparent = regenerate); "
                          "nothing was written")
    if outpaint_spec is not None:
        _, _, h, w = picture.shape
        picture, region = outpaint(picture, region, parse_outpaint(outpaint_spec, w, h))
        if not region.any():
            raise NothingToDo(f"--outpaint {outpaint_spec!r} adds no pixels to the square {w}x{h} picture: nothing to generate; "
                              "nothing was written")
    strength = 0.75 if strength is None and region is None else 1.0 if strength is None else strength
    if strength == 0:
        raise NothingToDo("--strength 0 keeps the picture as it is: nothing to generate; nothing was written")
    # pictures are recorded by file name: what is written names no local folder
    metadata = {"init_image": init_image.name, "strength": strength, "mask": mask.name if mask is not None else None,
                "outpaint": outpaint_spec}
    args = ["--init-image", init_image.name]
    args += ["--mask", mask.name] if mask is not None else []
    args += ["--outpaint", outpaint_spec] if outpaint_spec is not None else []
    args += ["--strength", f"{strength:g}"] if region is None else []
    return EditSource(picture, region, strength, metadata, args, [note] if note else [])


def edit_for(source: EditSource | None, size: tuple[int, int], device, dtype):
    """The edit at the run's output size (width, height), on its device and in its precision."""
    from dalle2_core.pipeline import ImageEdit

    if source is None:
        return None
    image, mask = fit_picture(source.image, source.mask, size)
    return ImageEdit(image.to(device=device, dtype=dtype), source.strength, mask.to(device) if mask is not None else None)


__all__ = ["MAX_GROWTH", "EditSource", "NothingToDo", "edit_for", "fit_picture", "outpaint", "parse_outpaint", "read_edit"]
