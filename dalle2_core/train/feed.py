"""The run's data, opened and checked before any work, and its micro-batches in a replayable order.

Sources: an image folder (`ImageTextFolder`), webdataset shards (`ShardStream`) and a clip-retrieval
embedding folder (`EmbeddingFolder`). Map-style sources (folders) are shuffled per epoch by a
`DistributedSampler` seeded with the run's seed; streams are endless and seeded too. Micro-batch n
of a run is therefore always the same, and a resumed run goes on from the micro-batch it had reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dalle2_core.data.batch import Batch, DataError, Samples, collate
from dalle2_core.data.embeddings import EmbeddingFolder
from dalle2_core.data.folder import ImageTextFolder
from dalle2_core.data.shards import ShardStream, expand_shards, is_shard_spec
from dalle2_core.helpers import exists
from dalle2_core.train import distributed
from dalle2_core.train.settings import TrainingError, TrainSettings


@dataclass
class Data:
    images: ImageTextFolder | list[str] | None  # a folder, or shard URLs
    embeddings: EmbeddingFolder | None
    image_size: int
    skipped: dict[str, str] = field(default_factory=dict)  # source -> reason, found while scanning


def _opened(setting: str, open_source):
    try:
        return open_source()
    except (FileNotFoundError, ValueError, DataError) as err:
        raise TrainingError(str(err), setting=setting) from None


def open_data(settings: TrainSettings, image_size: int, clip_dim: int, prior: bool, text_needed: bool) -> Data:
    """Open (and so check) every source the run names. `prior`: the prior trains in this run (it
    reads the embedding folder's text embeddings); `text_needed`: it needs captions too."""
    images = embeddings = None
    if exists(settings.data):
        images = _opened("data", lambda: expand_shards(str(settings.data)) if is_shard_spec(settings.data)
                         else ImageTextFolder(settings.data, image_size))
    if exists(settings.embeddings):
        embeddings = _opened("embeddings", lambda: EmbeddingFolder(settings.embeddings, text=prior))
    if exists(embeddings) and embeddings.dim != clip_dim:
        raise TrainingError(f"the embeddings in {embeddings.root} are {embeddings.dim} wide but the run's CLIP gives {clip_dim}; "
                            "use the CLIP that computed them", setting="embeddings", usage=True)
    if exists(embeddings) and prior and text_needed and not any(any(c) for c in embeddings.captions):
        raise TrainingError(f"{embeddings.root} has no captions (metadata 'caption' column); the prior conditions on "
                            "text encodings, which are computed from them", setting="embeddings", usage=True)
    data = Data(images, embeddings, image_size, dict(images.skipped) if isinstance(images, ImageTextFolder) else {})
    for source in (images, embeddings):
        if isinstance(source, torch.utils.data.Dataset):
            _check_size(source, settings)
    return data


def _per_epoch(size: int, settings: TrainSettings) -> int:
    rank, world = distributed.rank_world()
    return DistributedSampler(range(size), num_replicas=world, rank=rank, drop_last=True).num_samples // settings.local_batch


def _check_size(source, settings: TrainSettings) -> None:
    if _per_epoch(len(source), settings) == 0:
        raise TrainingError(f"{len(source)} examples are fewer than one batch of {settings.batch_size // settings.grad_accum}",
                            setting="batch_size", usage=True)


def micro_batches(source, settings: TrainSettings, start: int, image_size: int) -> Iterator[Batch]:
    """This process's micro-batches from number `start` on (a folder's, an embedding folder's or a stream's)."""
    if isinstance(source, list):
        yield from _stream(source, settings, start, image_size)
    else:
        yield from _epochs(source, settings, start)


def _stream(urls: list[str], settings: TrainSettings, start: int, image_size: int) -> Iterator[Batch]:
    rank, world = distributed.rank_world()
    stream = ShardStream(urls, image_size, settings.local_batch, seed=settings.seed, rank=rank, world=world,
                         shuffle_buffer=settings.shuffle_buffer, start=start)
    # its own generator, as for folders below: the global RNG belongs to the diffusion noise
    generator = torch.Generator().manual_seed(settings.seed)
    yield from DataLoader(stream, batch_size=None, num_workers=settings.num_workers, generator=generator)


def _epochs(dataset, settings: TrainSettings, start: int) -> Iterator[Batch]:
    rank, world = distributed.rank_world()
    local = settings.local_batch
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed, drop_last=True)
    per_epoch = len(sampler) // local
    number = start
    while True:
        epoch, skip = divmod(number, per_epoch)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        chunks = [indices[i * local : (i + 1) * local] for i in range(skip, per_epoch)]
        # its own generator: creating an iterator must not draw from the global RNG that the
        # diffusion noise comes from, or a resumed run would see different noise
        generator = torch.Generator().manual_seed(settings.seed + epoch)
        loader = DataLoader(Samples(dataset), batch_sampler=chunks, collate_fn=collate, num_workers=settings.num_workers,
                            generator=generator)
        for batch in loader:
            yield batch
            number += 1
