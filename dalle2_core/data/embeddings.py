"""Precomputed CLIP embeddings in clip-retrieval's layout, read memory-mapped.

    img_emb/img_emb_{i}.npy          (n_i, d) float16, l2-normalised image embeddings
    text_emb/text_emb_{i}.npy        (n_i, d) the captions' text embeddings
    metadata/metadata_{i}.parquet    n_i rows: `key` (or `image_path`), `caption`, ...

Row r of part i is the same sample in all three files. clip-retrieval pads `i` with zeros to the width of its
partition count (`img_emb_00.npy` .. once there are 10 or more), so a part is named by the digits its image
file has, and its other two files are looked up with the same digits. `EmbeddingFolder` is a map-style dataset of
every row (for the prior, which then never reads an image) and a lookup of image embeddings by key
(for the decoder, whose images come from a folder or shards). A part with a missing file or a row
count that differs between its files is refused when the folder is opened, naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from dalle2_core.data.batch import DataError, Sample

LAYOUT = "img_emb/img_emb_N.npy, text_emb/text_emb_N.npy and metadata/metadata_N.parquet (clip-retrieval's output)"


def _rows(path: Path) -> int:
    return np.load(path, mmap_mode="r").shape[0]


class EmbeddingFolder(torch.utils.data.Dataset):
    """The rows of a clip-retrieval embedding folder; `text=False` needs no `text_emb/` files."""

    def __init__(self, root: str | Path, *, text: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"embedding folder {self.root} does not exist or is not a folder")
        parts = sorted(
            ((int(m[1]), m[1]), p) for p in (self.root / "img_emb").glob("img_emb_*.npy")
            if (m := re.fullmatch(r"img_emb_(\d+)\.npy", p.name))
        )
        if not parts:
            raise DataError(f"no img_emb/img_emb_N.npy in {self.root}; expected {LAYOUT}")
        self.text = text
        self.parts = [digits for (_, digits), _ in parts]  # as written: "7", or "07" among 10 or more
        self.keys: list[np.ndarray] = []
        self.captions: list[list[str]] = []
        sizes = []
        for (_, digits), image_file in parts:
            sizes.append(self._check_part(digits, image_file))
        self.offsets = np.cumsum([0, *sizes])
        self.dim = np.load(parts[0][1], mmap_mode="r").shape[1]
        self._arrays: dict[tuple[str, int], np.ndarray] = {}
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    def _path(self, kind: str, number: str) -> Path:
        if kind == "metadata":
            return self.root / "metadata" / f"metadata_{number}.parquet"
        return self.root / kind / f"{kind}_{number}.npy"

    def _check_part(self, number: str, image_file: Path) -> int:
        """Rows of part `number`, after checking its files exist and agree; reads its keys and captions."""
        rows = {image_file: _rows(image_file)}
        for kind in ("text_emb", "metadata") if self.text else ("metadata",):
            path = self._path(kind, number)
            if not path.is_file():
                raise DataError(f"{path} is missing: embedding part {number} of {self.root} is incomplete; expected {LAYOUT}")
            rows[path] = pq.ParquetFile(path).metadata.num_rows if kind == "metadata" else _rows(path)
        if len(set(rows.values())) > 1:
            counts = ", ".join(f"{p.relative_to(self.root)} {n}" for p, n in rows.items())
            raise DataError(f"embedding part {number} of {self.root} is misaligned: rows {counts}")
        table = pq.read_table(self._path("metadata", number))
        names = table.column_names
        if "key" in names:
            keys = [str(k) for k in table.column("key").to_pylist()]
        elif "image_path" in names:
            keys = [Path(str(p)).stem for p in table.column("image_path").to_pylist()]
        else:
            raise DataError(f"{self._path('metadata', number)} has no 'key' or 'image_path' column to match samples by")
        self.keys.append(np.array(keys, dtype=object))
        self.captions.append([str(c) for c in table.column("caption").to_pylist()] if "caption" in names else [""] * len(keys))
        return rows[image_file]

    def _array(self, kind: str, part: int) -> np.ndarray:
        # opened in the process that reads them (a DataLoader worker maps its own view)
        if (kind, part) not in self._arrays:
            self._arrays[(kind, part)] = np.load(self._path(kind, self.parts[part]), mmap_mode="r")
        return self._arrays[(kind, part)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return part, index - int(self.offsets[part])

    def _row(self, kind: str, part: int, row: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._array(kind, part)[row], dtype=np.float32))

    def sample(self, index: int) -> Sample:
        part, row = self._locate(index)
        return Sample(
            key=self.keys[part][row],
            source=str(self._path("img_emb", self.parts[part])),
            image=None,
            caption=self.captions[part][row],
            image_embed=self._row("img_emb", part, row),
            text_embed=self._row("text_emb", part, row) if self.text else None,
        )

    def image_embeds(self, keys: list[str], sources: list[str]) -> torch.Tensor:
        """(b, d) image embeddings of the samples named `keys`; a key with no row is an error naming
        the sample's source (its shard or file)."""
        if self._index is None:
            everything = np.concatenate(self.keys).astype(str)
            order = np.argsort(everything, kind="stable")
            self._index = (everything[order], order)
        sorted_keys, order = self._index
        wanted = np.array(keys, dtype=str)
        at = np.searchsorted(sorted_keys, wanted).clip(max=len(sorted_keys) - 1)
        found = sorted_keys[at] == wanted
        if not found.all():
            i = int(np.argmin(found))
            raise DataError(f"sample {keys[i]!r} of {sources[i]} has no image embedding in {self.root}")
        return torch.stack([self._row("img_emb", *self._locate(int(g))) for g in order[at]])
