"""Training data as the tools that make it write it: clip-retrieval's zero-padded partitions, shards cut off mid-file,
captions that are not UTF-8 — read, or skipped and counted under a reason that says what is wrong."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dalle2_core.data.batch import count_reasons
from dalle2_core.data.embeddings import EmbeddingFolder
from dalle2_core.data.folder import ImageTextFolder
from dalle2_core.data.shards import ShardStream

CLIP_RETRIEVAL = Path(__file__).parents[1] / "fixtures" / "clip_retrieval" / "twelve_parts"


def test_clip_retrieval_zero_padded_partitions_are_read():
    # written by clip-retrieval's own NumpyWriter (tests/fixtures/clip_retrieval/make_fixtures.py): img_emb_00.npy .. _11
    assert (CLIP_RETRIEVAL / "img_emb" / "img_emb_00.npy").is_file()
    folder = EmbeddingFolder(CLIP_RETRIEVAL)
    assert len(folder) == 36 and folder.dim == 8
    first, last = folder.sample(0), folder.sample(35)
    assert first.key == "000" and first.caption == "caption 0 0"
    assert last.key == "112" and last.caption == "caption 11 2"
    written = np.load(CLIP_RETRIEVAL / "img_emb" / "img_emb_11.npy")
    assert np.array_equal(last.image_embed.numpy(), written[2].astype(np.float32))
    looked_up = folder.image_embeds(["110", "000"], ["a", "b"])
    assert np.array_equal(looked_up[0].numpy(), written[0].astype(np.float32))


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path)) as sink:  # webdataset's own writer, as img2dataset uses it
        for sample in samples:
            sink.write(sample)
    return path


def _all_skips(stream, batches: int):
    it = iter(stream)
    skips, used = [], []
    for _ in range(batches):
        batch = next(it)
        skips += batch.skipped
        used += list(batch.keys)
    return used, skips


@pytest.mark.parametrize("where", ["inside an image", "between members"])
def test_a_shard_cut_off_mid_file_is_reported_as_truncated(tmp_path, where):
    samples = [{"__key__": f"{i:04d}", "png": _png((40 * i, 0, 0)), "txt": f"caption {i}"} for i in range(4)]
    path = _shard(tmp_path / "00000.tar", samples)
    data = path.read_bytes()
    if where == "inside an image":
        cut = data.index(_png((80, 0, 0))) + 40  # inside sample 0002's image
    else:  # just before sample 0002's caption: a tar reader sees a clean end after 0002.png
        with tarfile.open(path) as tar:
            cut = next(m.offset for m in tar.getmembers() if m.name == "0002.txt")
    path.write_bytes(data[:cut])
    used, skips = _all_skips(ShardStream([str(path)], 16, 2, shuffle_buffer=1), 2)  # the second batch starts a new pass
    assert used[:2] == ["0000", "0001"] and "0002" not in used
    assert count_reasons(skips).get("no caption", 0) == 0, skips
    assert any(s.reason.startswith("unreadable or truncated shard") and "00000.tar" in s.source for s in skips), skips


def test_captions_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    samples = [{"__key__": "0000", "png": _png((200, 0, 0)), "txt": b"a red square"},
               {"__key__": "0001", "png": _png((0, 200, 0)), "txt": b"caf\xe9 latin-1"},
               {"__key__": "0002", "png": _png((0, 0, 200)), "txt": b"a blue square"}]
    path = _shard(tmp_path / "00000.tar", samples)
    used, skips = _all_skips(ShardStream([str(path)], 16, 3, shuffle_buffer=1), 1)
    assert sorted(used) == ["0000", "0002"]
    assert count_reasons(skips)["caption is not valid UTF-8"] == 1

    folder = tmp_path / "folder"
    folder.mkdir()
    for name, caption in (("a", b"a red square"), ("b", b"\xff\xfe\x00bad"), ("c", None)):
        Image.new("RGB", (16, 16)).save(folder / f"{name}.png")
        if caption is not None:
            (folder / f"{name}.txt").write_bytes(caption)
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "c.png", "text": "caf\xe9"}\n')
    dataset = ImageTextFolder(folder, 16)
    assert [p.name for p, _ in dataset.items] == ["a.png"]
    assert dataset.skipped_counts["caption is not valid UTF-8"] == 2, dataset.skipped


def test_a_folder_of_16_bit_pictures_trains_on_their_grey(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    Image.fromarray(np.full((16, 16), 16384, dtype=np.uint16)).save(folder / "g.png")
    (folder / "g.txt").write_text("a grey square")
    image, caption = ImageTextFolder(folder, 16)[0]
    assert caption == "a grey square" and abs(image.mean().item() - 0.25) < 0.01  # was 1.0: pure white
