"""Prompt adherence in the shapes world: read the five attributes back from an image and score them.

The read-back follows docs/shapes-world.md: background from the border median, object mask from
distance to the background colour, object colour from the mask median, shape from how the mask fills
its bounding box (the fill ratio, refined by template overlap), size from the bounding box, position
from the centroid. Measurements are converted to 64 px world units, so any image size works; images
larger than `MAX_WORK_SIZE` are box-downsampled first, which also averages away pixel noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from dalle2_core.shapes.world import (
    COLORS,
    PALETTE,
    POSITIONS,
    SIZES,
    SPLITS,
    WORLD_SIZE,
    Composition,
    parse_caption,
)

ATTRIBUTES: tuple[str, ...] = ("size", "color", "shape", "position", "background")
MAX_WORK_SIZE = 128

_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)  # (8, 3)
_SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2
# Objects smaller than this (world px^2) are noise, not a drawn shape; the small circle is ~154.
_MIN_OBJECT_AREA = 30.0


def _to_array(image) -> np.ndarray:
    """An (h, w, 3) float64 array in 0..255 from a PIL image, a uint8/float array or a [0, 1] tensor."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float64)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be (3, h, w) in [0, 1], got shape {tuple(image.shape)}")
        array = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64) * 255
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"array images must be (h, w, 3), got shape {image.shape}")
        array = image.astype(np.float64)
        if image.dtype != np.uint8:
            array = np.clip(array, 0, 1) * 255  # float arrays follow the library's [0, 1] convention
    else:
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    h, w = array.shape[:2]
    if min(h, w) < 8:
        raise ValueError(f"image of {w}x{h} px is too small to read; need at least 8x8")
    if max(h, w) > MAX_WORK_SIZE:
        scale = MAX_WORK_SIZE / max(h, w)
        small = Image.fromarray(array.round().astype(np.uint8)).resize(
            (max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BOX
        )
        array = np.asarray(small, dtype=np.float64)
    return array


def _nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> str:
    dist = np.linalg.norm(_PALETTE_RGB - rgb, axis=-1)
    if exclude is not None:
        dist[COLORS.index(exclude)] = np.inf
    return COLORS[int(dist.argmin())]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (label propagation; images are small)."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        padded = np.pad(labels, 1)
        # (9, h, w): each pixel's 3x3 neighbourhood; every masked pixel takes the largest label seen
        spread = np.stack([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]).max(0)
        spread = np.where(mask, spread, 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[counts.argmax()]


def _neighbour_count(mask: np.ndarray) -> np.ndarray:
    """How many of each pixel's 3x3 neighbourhood (itself included) are in the mask."""
    h, w = mask.shape
    padded = np.pad(mask.astype(np.int16), 1)
    return sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def _shape_templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Each shape drawn to fill an (h, w) bounding box, sampled at pixel centres."""
    y = (np.arange(h) + 0.5)[:, None] / h  # (h, 1) in (0, 1)
    x = (np.arange(w) + 0.5)[None, :] / w  # (1, w)
    depth = y + 0.5 / h  # the row's lower edge, as the renderer measures it
    return {
        "square": np.ones((h, w), dtype=bool),
        "circle": (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.25,
        "triangle": np.abs(x - 0.5) <= depth / 2,
    }


def _classify_shape(box: np.ndarray) -> str:
    """The shape whose template, drawn in the mask's bounding box, overlaps the mask best (IoU).

    Against the square template the IoU is exactly the spec's fill ratio (square 1, circle ~0.79,
    triangle ~0.5); the circle and triangle templates add where the pixels sit, which keeps blurred
    squares apart from circles and small circles apart from triangles.
    """
    ious = {
        name: (box & template).sum() / (box | template).sum()
        for name, template in _shape_templates(*box.shape).items()
    }
    return max(ious, key=ious.get)


def read_attributes(image) -> dict[str, str | None]:
    """The five attributes read from one image; object attributes are None when no object is found."""
    pixels = _to_array(image)
    h, w = pixels.shape[:2]
    sx, sy = w / WORLD_SIZE, h / WORLD_SIZE  # image pixels per world pixel

    ring = max(1, int(min(sx, sy)))
    border = np.concatenate([
        pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
        pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3),
    ])
    background = _nearest_colour(np.median(border, axis=0))
    out: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    out["background"] = background

    # "Far" = past half way to the palette colour closest to the background, so the boundary sits
    # midway between the two hardest-to-tell colours and edge blur splits evenly.
    bg_rgb = np.array(PALETTE[background], dtype=np.float64)
    gaps = np.linalg.norm(_PALETTE_RGB - bg_rgb, axis=-1)
    threshold = 0.5 * gaps[gaps > 0].min()
    mask = np.linalg.norm(pixels - bg_rgb, axis=-1) > threshold
    if min(sx, sy) >= 0.75:
        # 3x3 majority vote: drops noise specks stuck to the edge that would stretch the bounding
        # box. Below ~48 px a small object is only a few pixels wide, so the image is left alone.
        mask = _neighbour_count(mask) >= 5
    if mask.sum() < _MIN_OBJECT_AREA * sx * sy:
        return out
    mask = _largest_component(mask)
    area = mask.sum()
    if area < _MIN_OBJECT_AREA * sx * sy:
        return out

    # The colour comes from the interior where there is one: blurred edges mix in the background.
    interior = mask & (_neighbour_count(mask) == 9)
    core = interior if interior.sum() >= 4 else mask
    out["color"] = _nearest_colour(np.median(pixels[core], axis=0), exclude=background)
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    box_h, box_w = box.shape
    out["shape"] = _classify_shape(box)
    side = max(box_w / sx, box_h / sy)  # world px
    out["size"] = "small" if side < _SIZE_THRESHOLD else "large"

    cx, cy = (xs.mean() + 0.5) / sx, (ys.mean() + 0.5) / sy
    if out["shape"] == "triangle":
        cy -= box_h / sy / 6  # a triangle's centroid sits h/6 below its bounding-box centre
    anchors = np.array(list(POSITIONS.values()), dtype=np.float64)
    out["position"] = list(POSITIONS)[int(np.linalg.norm(anchors - [cx, cy], axis=-1).argmin())]
    return out


@dataclass(frozen=True)
class SplitScore:
    """Per-attribute accuracy and the all-five adherence rate over one split (None when empty)."""

    n: int
    accuracy: dict[str, float | None]
    adherence: float | None

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": dict(self.accuracy), "adherence": self.adherence}


@dataclass(frozen=True)
class AdherenceReport:
    seen: SplitScore
    held: SplitScore
    per_image: list[dict] = field(repr=False)

    def to_dict(self) -> dict:
        return {"seen": self.seen.to_dict(), "held": self.held.to_dict(), "per_image": self.per_image}


def _split_score(rows: list[dict]) -> SplitScore:
    if not rows:
        return SplitScore(0, dict.fromkeys(ATTRIBUTES), None)
    accuracy = {a: float(np.mean([r["correct"][a] for r in rows])) for a in ATTRIBUTES}
    return SplitScore(len(rows), accuracy, float(np.mean([r["adheres"] for r in rows])))


def _as_images(images) -> list:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"an image batch tensor must be (b, 3, h, w), got shape {tuple(images.shape)}")
        return list(images)
    return list(images)


def score(images, compositions: Sequence[Composition | str]) -> AdherenceReport:
    """Score images against their prompts (compositions or shapes-world captions), split by seen/held."""
    images = _as_images(images)
    if len(images) != len(compositions):
        raise ValueError(f"got {len(images)} images but {len(compositions)} compositions; they must pair up")
    rows = []
    for image, target in zip(images, compositions):
        target = parse_caption(target) if isinstance(target, str) else target
        if not isinstance(target, Composition):
            raise TypeError(f"expected a Composition or caption, got {type(target).__name__}")
        read = read_attributes(image)
        correct = {a: read[a] == getattr(target, a) for a in ATTRIBUTES}
        rows.append({
            "split": target.split, "expected": target.to_dict(), "read": read,
            "correct": correct, "adheres": all(correct.values()),
        })
    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    return AdherenceReport(_split_score(by_split["seen"]), _split_score(by_split["held"]), rows)


__all__ = ["ATTRIBUTES", "AdherenceReport", "SplitScore", "read_attributes", "score"]
