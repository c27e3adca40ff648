"""The training data sources: webdataset shards as a replayable stream, clip-retrieval embedding folders."""

import numpy as np
import pytest
import torch
from helpers.train_data import shapes, write_embeddings, write_shards
from torch.utils.data import DataLoader

from dalle2_core.data.batch import DataError
from dalle2_core.data.embeddings import EmbeddingFolder
from dalle2_core.data.shards import ShardStream, expand_shards, is_shard_spec


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, num_shards=3, per_shard=6, embed_dim=8, corrupt={4})
    return root


def keys(stream, workers=0, n=6):
    loader = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    return [next(loader).keys for _ in range(n)]


def test_shard_specs_are_expanded_and_checked(shards):
    spec = str(shards / "{00000..00002}.tar")
    assert is_shard_spec(spec) and is_shard_spec(f"pipe:cat {spec}") and not is_shard_spec(shards)
    assert expand_shards(spec) == [str(shards / f"{i:05d}.tar") for i in range(3)]
    with pytest.raises(DataError, match=r"shard .*00003.tar does not exist \(1 of 4 shards"):
        expand_shards(str(shards / "{00000..00003}.tar"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_at_batch_n_replays_the_same_batches(shards, workers):
    urls = expand_shards(str(shards / "{00000..00002}.tar"))
    whole = keys(ShardStream(urls, 16, 3, seed=5, shuffle_buffer=4), workers, n=8)
    assert keys(ShardStream(urls, 16, 3, seed=5, shuffle_buffer=4, start=3), workers, n=5) == whole[3:]
    # 24 draws from 18 samples: endless, the shards come round again; the corrupt sample is left out
    seen = [k for batch in whole for k in batch]
    assert "000000004" not in seen and {k[:5] for k in seen} == {"00000", "00001", "00002"} and 22 <= len(seen) <= 23


def test_processes_read_different_shards(shards):
    urls = expand_shards(str(shards / "{00000..00002}.tar"))
    firsts = [{k[:5] for b in keys(ShardStream(urls, 16, 2, rank=r, world=2, shuffle_buffer=1), n=3) for k in b} for r in (0, 1)]
    assert firsts[0] and firsts[1] and not firsts[0] & firsts[1]  # each its own shard of the first pass


def test_shard_samples_decode_and_bad_ones_are_counted(shards):
    urls = [f"pipe:cat {shards / '00000.tar'}"]  # remote shards are read the same way
    batch = next(iter(ShardStream(urls, 16, 6, shuffle_buffer=1)))
    assert batch.images.shape == (5, 3, 16, 16) and 0 <= batch.images.min() and batch.images.max() <= 1
    assert batch.image_embed.shape == (5, 8) and batch.image_embed.dtype == torch.float32
    assert batch.captions[0] == next(shapes(1))[2]
    assert [(s.source.endswith(":000000004"), s.reason.split(":")[0]) for s in batch.skipped] == [(True, "unreadable image")]


def test_a_stream_that_never_yields_a_sample_fails_instead_of_hanging(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(DataError, match="no sample could be read from 1 shard"):
        next(iter(ShardStream([str(tmp_path / "empty.tar")], 16, 2)))


@pytest.fixture()
def embeddings(tmp_path):
    names = [f"{i:09d}" for i in range(10)]
    return write_embeddings(tmp_path / "emb", names, [f"caption {n}" for n in names], dim=8, parts=3), names


def test_embedding_folder_rows_and_lookup_by_key(embeddings):
    root, names = embeddings
    folder = EmbeddingFolder(root)
    assert len(folder) == 10 and folder.dim == 8 and folder.parts == ["0", "1", "2"]
    sample = folder.sample(5)  # part 1 holds rows 4..6
    expected = np.load(root / "img_emb" / "img_emb_1.npy")[1].astype(np.float32)
    assert sample.key == names[5] and sample.caption == f"caption {names[5]}" and sample.image is None
    assert torch.equal(sample.image_embed, torch.from_numpy(expected))
    assert torch.allclose(sample.text_embed.norm(), torch.tensor(1.0), atol=1e-3)
    looked_up = folder.image_embeds([names[9], names[5]], ["a", "b"])
    assert torch.equal(looked_up[1], sample.image_embed) and looked_up.shape == (2, 8)
    with pytest.raises(DataError, match=r"sample 'nope' of shards/00001.tar has no image embedding in"):
        folder.image_embeds([names[0], "nope"], ["x", "shards/00001.tar"])


def test_a_missing_or_misaligned_embedding_part_is_named(embeddings):
    root, _ = embeddings
    (root / "text_emb" / "text_emb_2.npy").unlink()
    with pytest.raises(DataError, match=r"text_emb_2.npy is missing: embedding part 2 of .* is incomplete"):
        EmbeddingFolder(root)
    assert len(EmbeddingFolder(root, text=False)) == 10  # the decoder needs image embeddings only
    np.save(root / "img_emb" / "img_emb_1.npy", np.zeros((4, 8), np.float16))
    with pytest.raises(DataError, match=r"embedding part 1 of .* is misaligned: rows img_emb/img_emb_1.npy 4, metadata/metadata_1.parquet 3"):
        EmbeddingFolder(root, text=False)
