"""The shapes world: palette, compositions, splits, captions and rendering (docs/shapes-world.md).

A composition is the five facts a caption names (size, colour, shape, position, background).
Rendering places the object's bounding-box centre at the position's anchor plus a uniform jitter of
at most 3 px. Coordinates are in the 64 px world and scaled to the requested output size, so one
composition renders consistently at any resolution. All randomness comes from a seeded
`numpy.random.Generator`; nothing touches a global RNG.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from dalle2_core.choices import SHAPES_SPLITS

WORLD_SIZE = 64
JITTER = 3

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# bounding-box side in world pixels
SIZES: dict[str, int] = {"small": 14, "large": 28}
# bounding-box centre (x right, y down) in world pixels
POSITIONS: dict[str, tuple[int, int]] = {
    "center": (32, 32),
    "left": (18, 32),
    "right": (46, 32),
    "top": (32, 18),
    "bottom": (32, 46),
}
WHERE: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
# (colour, shape) pairs never shown in training: the generalisation test
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "circle"), ("green", "square")}
)
SPLITS = SHAPES_SPLITS

# Index 0 is the canonical form used for evaluation prompts; the rest vary wording and order.
PHRASINGS: tuple[str, ...] = (
    "a {size} {color} {shape} {where} on a {background} background",
    "{background} background, {size} {color} {shape} {where}",
    "{size} {color} {shape} {where}, {background} background",
    "{where} there is a {size} {color} {shape}; the background is {background}",
)


def _check_choice(name: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")


@dataclass(frozen=True, order=True)
class Composition:
    """The five attributes of one shapes-world image."""

    color: str
    shape: str
    size: str
    position: str
    background: str

    def __post_init__(self):
        _check_choice("color", self.color, COLORS)
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("size", self.size, tuple(SIZES))
        _check_choice("position", self.position, tuple(POSITIONS))
        _check_choice("background", self.background, COLORS)
        if self.color == self.background:
            raise ValueError(f"object colour {self.color!r} must differ from the background colour")

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT_PAIRS

    @property
    def split(self) -> str:
        return "held" if self.held_out else "seen"

    def caption(self, phrasing: int = 0) -> str:
        """The caption in phrasing `phrasing` (0 = canonical)."""
        if not 0 <= phrasing < len(PHRASINGS):
            raise ValueError(f"phrasing {phrasing} out of range; accepted: 0..{len(PHRASINGS) - 1}")
        return PHRASINGS[phrasing].format(
            size=self.size, color=self.color, shape=self.shape,
            where=WHERE[self.position], background=self.background,
        )

    def to_dict(self) -> dict[str, str]:
        return {"color": self.color, "shape": self.shape, "size": self.size,
                "position": self.position, "background": self.background}


def all_compositions() -> list[Composition]:
    """All 1,680 compositions in a fixed order."""
    return [
        Composition(color, shape, size, position, background)
        for color, shape, size, position, background in itertools.product(
            COLORS, SHAPES, SIZES, POSITIONS, COLORS
        )
        if color != background
    ]


def compositions(split: str) -> list[Composition]:
    """The compositions of `split`: "seen" (trainable) or "held" (held-out colour/shape pairs)."""
    _check_choice("split", split, SPLITS)
    return [c for c in all_compositions() if c.split == split]


def _caption_pattern(template: str) -> re.Pattern:
    alternatives = {
        "size": SIZES, "color": COLORS, "shape": SHAPES,
        "where": WHERE.values(), "background": COLORS,
    }
    pattern = re.escape(template)
    for field, values in alternatives.items():
        group = f"(?P<{field}>{'|'.join(map(re.escape, values))})"
        pattern = pattern.replace(re.escape("{" + field + "}"), group)
    return re.compile(pattern)


_CAPTION_PATTERNS = tuple(_caption_pattern(t) for t in PHRASINGS)
_POSITION_OF_WHERE = {where: position for position, where in WHERE.items()}


def parse_caption(caption: str) -> Composition:
    """The composition a caption in any of the generator's phrasings describes."""
    text = " ".join(caption.strip().lower().split())
    for pattern in _CAPTION_PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            g = match.groupdict()
            return Composition(g["color"], g["shape"], g["size"], _POSITION_OF_WHERE[g["where"]], g["background"])
    raise ValueError(
        f"caption {caption!r} is not in any shapes-world phrasing; accepted forms: " + " | ".join(PHRASINGS)
    )


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def object_mask(composition: Composition, size: int = WORLD_SIZE, offset: tuple[float, float] = (0, 0)) -> np.ndarray:
    """Boolean (size, size) mask of the object, drawn in world units and sampled at pixel centres."""
    scale = size / WORLD_SIZE
    side = SIZES[composition.size] * scale
    ax, ay = POSITIONS[composition.position]
    cx, cy = (ax + offset[0]) * scale, (ay + offset[1]) * scale
    coords = np.arange(size, dtype=np.float64) + 0.5
    x, y = coords[None, :], coords[:, None]  # (1, size), (size, 1)
    half = side / 2
    if composition.shape == "square":
        return (x >= cx - half) & (x < cx + half) & (y >= cy - half) & (y < cy + half)
    if composition.shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 < half**2
    # Isosceles triangle, apex up, base width = height: the half-width grows by 1/2 per unit of
    # depth. Measuring depth at the row's lower edge keeps the apex row non-empty.
    top = cy - half
    depth = y + 0.5 - top
    return (depth > 0) & (y < cy + half) & (np.abs(x - cx) <= depth / 2)


def render(
    composition: Composition,
    rng: np.random.Generator | int | None = None,
    *,
    size: int = WORLD_SIZE,
    offset: tuple[float, float] | None = None,
) -> Image.Image:
    """An RGB image of `composition`; the centre is jittered by `rng` (±3 px) unless `offset` is given.

    With neither `rng` nor `offset` the object sits exactly on its anchor.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 pixels, got {size!r}")
    if offset is None:
        offset = (0, 0) if rng is None else tuple(_as_rng(rng).integers(-JITTER, JITTER + 1, size=2))
    if max(abs(offset[0]), abs(offset[1])) > JITTER:
        raise ValueError(f"offset {offset} exceeds the world's jitter of ±{JITTER} px")
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[:] = PALETTE[composition.background]
    pixels[object_mask(composition, size, offset)] = PALETTE[composition.color]
    return Image.fromarray(pixels, mode="RGB")


class Sample(NamedTuple):
    image: Image.Image
    caption: str
    composition: Composition


def sample_compositions(n: int, split: str = "seen", rng: np.random.Generator | int | None = 0) -> list[Composition]:
    """`n` compositions drawn uniformly (with replacement) from `split`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = compositions(split)
    idx = _as_rng(rng).integers(0, len(pool), size=n)
    return [pool[i] for i in idx]


def generate(n: int, split: str = "seen", seed: int | np.random.Generator = 0, *, size: int = WORLD_SIZE) -> Iterator[Sample]:
    """`n` training samples of `split`: uniform compositions, jittered renders, random phrasings."""
    rng = _as_rng(seed)
    for composition in sample_compositions(n, split, rng):
        image = render(composition, rng, size=size)
        caption = composition.caption(int(rng.integers(len(PHRASINGS))))
        yield Sample(image, caption, composition)


def eval_prompts(split: str = "seen", n: int | None = None, seed: int = 0) -> tuple[list[str], list[Composition]]:
    """Canonical prompts and their compositions for evaluation.

    The split is shuffled with `seed` and cycled, so any `n` up to the split's size has no repeats
    (default: the whole split).
    """
    pool = compositions(split)
    n = len(pool) if n is None else n
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = _as_rng(seed).permutation(len(pool))
    chosen = [pool[order[i % len(pool)]] for i in range(n)]
    return [c.caption(0) for c in chosen], chosen


__all__ = [
    "COLORS",
    "Composition",
    "HELD_OUT_PAIRS",
    "JITTER",
    "PALETTE",
    "PHRASINGS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Sample",
    "WHERE",
    "WORLD_SIZE",
    "all_compositions",
    "compositions",
    "eval_prompts",
    "generate",
    "object_mask",
    "parse_caption",
    "render",
    "sample_compositions",
]
