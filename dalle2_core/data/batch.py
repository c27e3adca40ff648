"""What every training data source yields: samples, and batches of them with the skips counted."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch


class Sample(NamedTuple):
    key: str  # the sample's name (file stem, webdataset `__key__`, clip-retrieval `key`)
    source: str  # where it came from (image path, shard URL, embedding file), for error messages
    image: torch.Tensor | None  # (3, s, s) in [0, 1]; None for embedding-only data
    caption: str
    image_embed: torch.Tensor | None = None  # (d,) precomputed CLIP image embedding
    text_embed: torch.Tensor | None = None  # (d,) precomputed CLIP text embedding


class Skip(NamedTuple):
    """An item that could not be used; `reason` is a short phrase, details after a colon."""

    source: str
    reason: str


class Batch(NamedTuple):
    keys: list[str]
    sources: list[str]
    images: torch.Tensor | None  # (b, 3, s, s)
    captions: list[str]
    image_embed: torch.Tensor | None  # (b, d), only when every sample had one
    text_embed: torch.Tensor | None
    skipped: list[Skip]

    def __len__(self) -> int:
        return len(self.keys)


def _stack(values: list) -> torch.Tensor | None:
    return torch.stack(values) if values and all(v is not None for v in values) else None


def collate(items: list[Sample | Skip]) -> Batch:
    """Stack the samples of a batch; skipped items are left out (the batch may come out short or empty)."""
    samples = [item for item in items if isinstance(item, Sample)]
    return Batch(
        keys=[s.key for s in samples],
        sources=[s.source for s in samples],
        images=_stack([s.image for s in samples]),
        captions=[s.caption for s in samples],
        image_embed=_stack([s.image_embed for s in samples]),
        text_embed=_stack([s.text_embed for s in samples]),
        skipped=[item for item in items if isinstance(item, Skip)],
    )


def count_reasons(skips: list[Skip]) -> Counter:
    """How many items were skipped for each kind of reason (the part of a reason before a colon)."""
    return Counter(skip.reason.split(":")[0] for skip in skips)


class Samples(torch.utils.data.Dataset):
    """A map-style dataset of `source.sample(i)` (a `Sample` or a `Skip`), for a DataLoader."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample | Skip:
        return self.source.sample(index)


class DataError(RuntimeError):
    """Training data that cannot be used (a missing or misaligned shard, an unknown key); one line."""

    def __init__(self, message: str):
        # a DataLoader worker's error comes back with the worker's traceback in front: keep its last line
        if "\nOriginal Traceback" in message:
            message = message.strip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)
