"""A folder of images with captions as a map-style dataset (for `dream train`).

Two layouts are read, and may be mixed:
- sidecar captions: `cat.png` + `cat.txt` (same stem, same folder);
- Hugging Face ImageFolder metadata: a `metadata.jsonl` whose rows hold `file_name` (relative to
  the metadata file's folder) and `text`. A metadata caption wins over a sidecar file.

Bad data never stops a long run: images without a caption, empty captions, captions that are not UTF-8
and broken metadata rows are dropped while scanning, and images that fail to decode are dropped when loaded. Each is recorded
in `dataset.skipped`, a dict from path to reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dalle2_core.data.batch import Sample, Skip
from dalle2_core.data.pictures import to_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"
LAYOUTS = (
    "images with sidecar captions (cat.png + cat.txt), or a metadata.jsonl with "
    f"'file_name' and 'text' per line; image types {', '.join(IMAGE_EXTENSIONS)}"
)
# PIL raises any of these for a truncated or malformed file, depending on the format plugin.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def clean_caption(text: str) -> str:
    return " ".join(text.split())


def load_image(file: str | Path | IO[bytes], size: int) -> torch.Tensor:
    """Decode, centre-crop to square and resize (antialiased) to a (3, size, size) tensor in [0, 1]."""
    with Image.open(file) as img:
        img.draft(img.mode, (size, size))  # JPEG: decode at a reduced scale that is still >= size
        img = to_rgb(img)  # 16-bit greyscale from its range, alpha on white; an undefined mode raises
        # crop first: resizing with a crop box would let the filter read pixels outside it
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.Resampling.BICUBIC)  # antialiased when shrinking
    array = np.array(img, dtype=np.uint8)  # (h, w, 3)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)  # (3, h, w)


class ImageTextFolder(Dataset):
    """(image, caption) pairs from `root`; images are RGB float tensors in [0, 1], (3, size, size).

    Items are sorted by path, so the order is the same on every machine and DDP rank; shard with
    `torch.utils.data.distributed.DistributedSampler`. An image that fails to decode yields `None`
    (drop those when batching). With worker processes, load-time skips are recorded in the workers'
    copies of the dataset, not this one. `key(i)` is the file name without its extension, as
    img2dataset and clip-retrieval name a sample.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        *,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist or is not a folder")
        self.image_size = image_size
        self.extensions = tuple(e.lower() for e in extensions)
        self.skipped: dict[str, str] = {}
        self.items: list[tuple[Path, str]] = self._scan()
        if not self.items:
            raise ValueError(
                f"no captioned images in {self.root} ({len(self.skipped)} skipped: "
                f"{dict(self.skipped_counts)}); expected {LAYOUTS}"
            )

    def _scan(self) -> list[tuple[Path, str]]:
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in self.extensions]
        if not images:
            raise ValueError(f"no images found in {self.root}; expected {LAYOUTS}")
        image_set = set(images)
        captions: dict[Path, str] = {}
        for meta in (p for p in files if p.name == METADATA_FILE):
            captions.update(self._read_metadata(meta, image_set))
        items = []
        for image in images:
            caption = captions.get(image)
            if caption is None:
                sidecar = image.with_suffix(".txt")
                if not sidecar.is_file():
                    self.skipped[str(image)] = "no caption"
                    continue
                try:
                    caption = clean_caption(sidecar.read_bytes().decode("utf-8"))
                except UnicodeDecodeError as err:
                    self.skipped[str(image)] = f"caption is not valid UTF-8: {sidecar.name}: {err.reason} at byte {err.start}"
                    continue
            if not caption:
                self.skipped[str(image)] = "empty caption"
                continue
            items.append((image, caption))
        return items

    def _read_metadata(self, meta: Path, images: set[Path]) -> dict[Path, str]:
        captions = {}
        for number, raw in enumerate(meta.read_bytes().splitlines(), 1):
            if not raw.strip():
                continue
            where = f"{meta}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                self.skipped[where] = f"caption is not valid UTF-8: {err.reason} at byte {err.start}"
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                self.skipped[where] = "invalid JSON in metadata"
                continue
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or not isinstance(row.get("text"), str):
                self.skipped[where] = "metadata row needs string 'file_name' and 'text'"
                continue
            path = meta.parent / row["file_name"]
            if path not in images:
                self.skipped[where] = f"metadata names a missing image: {row['file_name']!r}"
                continue
            captions[path] = clean_caption(row["text"])
        return captions

    @property
    def skipped_counts(self) -> Counter:
        """How many items were skipped for each kind of reason."""
        return Counter(reason.split(":")[0] for reason in self.skipped.values())

    def __len__(self) -> int:
        return len(self.items)

    def key(self, index: int) -> str:
        return self.items[index][0].stem

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str] | None:
        path, caption = self.items[index]
        try:
            return load_image(path, self.image_size), caption
        except DECODE_ERRORS as err:
            self.skipped[str(path)] = f"unreadable image: {err}"
            return None

    def sample(self, index: int) -> Sample | Skip:
        """Item `index` as a training `Sample`, or the `Skip` saying why it cannot be used."""
        path, caption = self.items[index]
        item = self[index]
        if item is None:
            return Skip(str(path), self.skipped[str(path)])
        return Sample(self.key(index), str(path), item[0], caption)


__all__ = ["DECODE_ERRORS", "IMAGE_EXTENSIONS", "LAYOUTS", "METADATA_FILE", "ImageTextFolder", "clean_caption", "load_image"]
