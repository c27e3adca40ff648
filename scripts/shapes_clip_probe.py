"""Zero-shot read-out of a shapes-world CLIP: can its image embedding tell each attribute apart?

For rendered seen-split images, the caption is varied in one attribute at a time (every other value
of that attribute, the rest kept) and the CLIP picks the caption whose text embedding is closest to
the image embedding. Prints the accuracy per attribute, split by object size. The decoder is
conditioned on this embedding, so an attribute the CLIP cannot read is one the images will miss.

    python scripts/shapes_clip_probe.py RUN_OR_MODEL_FOLDER [--num 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import to_tensor

from dalle2_core.checkpoint import load_component
from dalle2_core.clip import as_clip_adapter
from dalle2_core.shapes.world import COLORS, POSITIONS, SHAPES, SIZES, render, sample_compositions

CHOICES = {"color": COLORS, "shape": SHAPES, "size": tuple(SIZES), "position": tuple(POSITIONS), "background": COLORS}


def _variants(composition, attribute: str) -> list:
    """`composition` with `attribute` set to each of its values (object and background colours must differ)."""
    other = {"color": composition.background, "background": composition.color}.get(attribute)
    return [replace(composition, **{attribute: v}) for v in CHOICES[attribute] if v != other]


@torch.no_grad()
def probe(clip, num: int, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    hits: dict[str, dict[str, list[bool]]] = {a: {"small": [], "large": []} for a in CHOICES}
    for composition in sample_compositions(num, "seen", rng):
        image = to_tensor(render(composition, rng))[None]  # (1, 3, h, w) in [0, 1]
        image_embed = clip.embed_image(image).image_embed  # (1, d)
        for attribute in CHOICES:
            candidates = _variants(composition, attribute)
            text_embed = clip.embed_text([c.caption(0) for c in candidates]).text_embed  # (k, d)
            best = candidates[int((text_embed @ image_embed.T).argmax())]
            hits[attribute][composition.size].append(best == composition)
    return {a: {size: round(float(np.mean(v)), 3) for size, v in by_size.items()} for a, by_size in hits.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a model or dream train run folder with a clip/ component")
    p.add_argument("--num", type=int, default=300, help="rendered images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    clip = as_clip_adapter(load_component(args.model / "clip")).eval()
    print(json.dumps({"model": str(args.model), "num": args.num, "zero_shot_accuracy": probe(clip, args.num, args.seed)}))


if __name__ == "__main__":
    main()
