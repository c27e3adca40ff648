"""Write the shapes world to disk in the training folder format (images + captions)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dalle2_core.choices import SHAPES_FORMATS
from dalle2_core.data.folder import METADATA_FILE  # the folder format the training data loader reads
from dalle2_core.shapes.world import WORLD_SIZE, generate

FORMATS = SHAPES_FORMATS


def check_output_folder(out: str | Path) -> Path:
    """`out` as a Path if it is new or an empty folder; otherwise an error, so nothing is overwritten."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new or empty folder (nothing is overwritten)")
    return out


def write_shapes_folder(
    out: str | Path,
    num: int,
    *,
    split: str = "seen",
    seed: int = 0,
    format: str = "txt",
    size: int = WORLD_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Render `num` samples of `split` into `out` as PNGs with captions; returns the image paths.

    `format="txt"` writes a sidecar `<stem>.txt` per image; `format="jsonl"` writes one
    `metadata.jsonl` (Hugging Face ImageFolder: `file_name`, `text`, plus the five attributes).
    The folder must be new or empty so that an earlier dataset is never mixed into or overwritten.
    `on_progress(i)` is called after each image.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; accepted: {', '.join(FORMATS)}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    out = check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)

    digits = max(6, len(str(num - 1)))
    paths = []
    metadata = []
    for i, sample in enumerate(generate(num, split, seed, size=size)):
        path = out / f"{i:0{digits}d}.png"
        sample.image.save(path)
        if format == "txt":
            path.with_suffix(".txt").write_text(sample.caption + "\n", encoding="utf-8")
        else:
            metadata.append({"file_name": path.name, "text": sample.caption, **sample.composition.to_dict()})
        paths.append(path)
        if on_progress is not None:
            on_progress(i)
    if format == "jsonl":
        lines = "".join(json.dumps(row) + "\n" for row in metadata)
        (out / METADATA_FILE).write_text(lines, encoding="utf-8")
    return paths


__all__ = ["FORMATS", "METADATA_FILE", "check_output_folder", "write_shapes_folder"]
