"""webdataset shards (img2dataset's `webdataset` output) as an endless, resumable stream of batches.

A shard spec is what img2dataset users write: `shards/{00000..00999}.tar`, several joined by `::`,
or `pipe:COMMAND` for remote ones (`pipe:curl -s URL/{00000..00999}.tar`); the `webdataset` library
expands the braces, opens the streams and reads the tar files. A sample is `{key}.jpg|png|webp` +
`{key}.txt`, optionally `{key}.npy` (a precomputed CLIP image embedding); other members (`json`)
are ignored.

Order: the shards are dealt out in passes, each pass a seeded permutation of all of them, so the
stream never ends. Process `rank` with DataLoader worker `w` of `W` reads every `world * W`-th shard
of that sequence (its own share: no two readers open the same shard in a pass while there are enough
shards), mixes its samples in a seeded shuffle buffer and yields batches of `batch_size`. Everything
depends only on the seed and the (rank, worker) split, so the stream from a given batch on can be
replayed: `start=n` skips the first n batches, reading their tar bytes without decoding images.
Samples that cannot be used (no image, no caption, a caption that is not UTF-8, an image that does not decode, a
shard cut off mid-file) are dropped from their batch and reported in `Batch.skipped`, as in folders.
"""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from dalle2_core.data.batch import Batch, DataError, Sample, Skip, collate
from dalle2_core.data.folder import DECODE_ERRORS, clean_caption, load_image

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def is_shard_spec(data: str | Path) -> bool:
    """Whether `data` names webdataset shards (rather than a folder)."""
    text = str(data)
    return text.startswith("pipe:") or any(part.endswith(SHARD_SUFFIXES) for part in text.split("::"))


def expand_shards(spec: str) -> list[str]:
    """The shard URLs of `spec` (braces expanded); a local shard that does not exist is an error."""
    urls = wds.shardlists.expand_urls(str(spec))
    missing = [u for u in urls if not u.startswith("pipe:") and "://" not in u and not Path(u).is_file()]
    if missing:
        raise DataError(f"shard {missing[0]} does not exist ({len(missing)} of {len(urls)} shards of {spec!r} are missing)")
    return urls


class _ShardSequence:
    """One reader's share of the endless sequence of passes over the shards (webdataset `{url}` items).

    A reader that goes through every shard twice without getting a sample (all unreadable, or empty)
    raises instead of spinning for ever."""

    def __init__(self, urls: list[str], seed: int, reader: int, readers: int):
        self.urls, self.seed, self.reader, self.readers = urls, seed, reader, readers
        self.since_sample = 0
        self.current: str | None = None  # the shard being read

    def __iter__(self) -> Iterator[dict]:
        def passes():
            for number in itertools.count():
                order = list(self.urls)
                random.Random(f"{self.seed}-{number}").shuffle(order)
                yield from order

        for url in itertools.islice(passes(), self.reader, None, self.readers):
            self.since_sample += 1
            self.current = url
            if self.since_sample > 2 * len(self.urls):
                raise DataError(f"no sample could be read from {len(self.urls)} shard(s) in two passes; last tried {url}")
            yield dict(url=url)

    def count_samples(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.since_sample = 0
            yield sample


def ends_cleanly(url: str) -> bool:
    """Whether a local tar shard ends with the end-of-archive marker (two zero blocks) every tar writer adds: a shard
    cut off at a member boundary reads as a clean, shorter archive otherwise. Streams (`pipe:`, URLs) count as whole."""
    if url.startswith("pipe:") or "://" in url or not url.endswith(".tar"):
        return True
    try:
        with open(url, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 1024))
            return size >= 1024 and size % 512 == 0 and not any(f.read())
    except OSError:
        return False


def decode_sample(raw: dict, image_size: int, truncated: frozenset[str] = frozenset()) -> Sample | Skip:
    """A webdataset sample (a dict of member bytes by extension) as a training `Sample`; a sample missing members of a
    shard in `truncated` is reported as cut off, not as lacking them."""
    source = f"{raw.get('__url__')}:{raw.get('__key__')}"
    image_key = next((k for k in IMAGE_KEYS if k in raw), None)
    missing = "no image" if image_key is None else "no caption" if "txt" not in raw else None
    if missing is not None:
        if raw.get("__url__") in truncated:
            return Skip(source, f"unreadable or truncated shard: it ends mid-file, and this sample has {missing}")
        return Skip(source, missing)
    try:
        caption = clean_caption(raw["txt"].decode("utf-8"))
    except UnicodeDecodeError as err:
        return Skip(source, f"caption is not valid UTF-8: {err.reason} at byte {err.start}")
    if not caption:
        return Skip(source, "empty caption")
    try:
        image = load_image(io.BytesIO(raw[image_key]), image_size)
    except DECODE_ERRORS as err:
        return Skip(source, f"unreadable image: {err}")
    embed = None
    if "npy" in raw:
        try:
            embed = torch.from_numpy(np.load(io.BytesIO(raw["npy"])).astype(np.float32).reshape(-1))
        except (ValueError, OSError) as err:
            return Skip(source, f"unreadable npy: {err}")
    return Sample(raw["__key__"], source, image, caption, image_embed=embed)


class ShardStream(IterableDataset):
    """Endless batches of this process's share of `urls`; use with `DataLoader(stream, batch_size=None)`.

    With `W` loader workers the DataLoader takes batches from workers 0, 1, .., W-1 in turn; a stream
    started at batch `start` lets worker p play the part of worker (p + start) mod W, so the batches
    come in the same order as in a stream that was never stopped.
    """

    def __init__(self, urls: list[str], image_size: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle_buffer: int = 1000, start: int = 0):
        super().__init__()
        if not urls:
            raise ValueError("no shards to read")
        self.urls, self.image_size, self.batch_size = list(urls), image_size, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.shuffle_buffer, self.start = shuffle_buffer, start

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        worker = (physical + self.start) % workers
        reader, readers = self.rank * workers + worker, self.world * workers
        errors: list[Skip] = []
        shards = _ShardSequence(self.urls, self.seed, reader, readers)
        truncated = frozenset(url for url in self.urls if not ends_cleanly(url))

        def keep_going(exn: Exception) -> bool:  # a shard that cannot be read is skipped, not fatal
            message = str(exn.args[0]) if exn.args else ""
            errors.append(Skip(shards.current or "?", f"unreadable or truncated shard: {type(exn).__name__}: {message}"))
            return True

        raw = iter(wds.DataPipeline(
            lambda: iter(shards),
            wds.tarfile_to_samples(handler=keep_going),
            shards.count_samples,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(f"{self.seed}-{reader}")),
        ))
        # batches this worker made before `start`: replay their samples without decoding them
        done_before = (self.start - worker + workers - 1) // workers
        for _ in itertools.islice(raw, done_before * self.batch_size):
            pass
        errors.clear()
        while True:
            items = [decode_sample(sample, self.image_size, truncated) for sample in itertools.islice(raw, self.batch_size)]
            batch = collate(items + errors)
            errors.clear()
            yield batch
