"""ImageTextFolder: both caption layouts, centre-crop + resize, bad data skipped and counted, DDP shards."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dalle2_core.data import ImageTextFolder
from dalle2_core.data.batch import Samples, Skip, collate
from dalle2_core.shapes import write_shapes_folder

RED, BLUE = (220, 40, 40), (40, 80, 220)


def solid(path, size, colour, mode="RGB"):
    Image.new("RGB", size, colour).convert(mode).save(path)


def test_sidecar_layout_with_bad_data(tmp_path):
    solid(tmp_path / "b.png", (20, 20), RED)
    (tmp_path / "b.txt").write_text("  a red\n square  \n")
    solid(tmp_path / "a.jpg", (24, 24), BLUE)
    (tmp_path / "a.txt").write_text("blue")
    (tmp_path / "sub").mkdir()
    solid(tmp_path / "sub" / "grey.bmp", (16, 16), (90, 90, 90), mode="L")
    (tmp_path / "sub" / "grey.txt").write_text("grey")
    solid(tmp_path / "empty.png", (16, 16), RED)
    (tmp_path / "empty.txt").write_text("   \n")
    solid(tmp_path / "uncaptioned.webp", (16, 16), RED)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "corrupt.txt").write_text("broken")
    (tmp_path / "notes.md").write_text("not an image")

    ds = ImageTextFolder(tmp_path, image_size=8)
    # sorted by path; the corrupt file is only found when loaded
    assert [p.name for p, _ in ds.items] == ["a.jpg", "b.png", "corrupt.png", "grey.bmp"]
    assert [c for _, c in ds.items] == ["blue", "a red square", "broken", "grey"]
    assert ds.skipped == {str(tmp_path / "empty.png"): "empty caption",
                          str(tmp_path / "uncaptioned.webp"): "no caption"}

    image, caption = ds[1]
    assert caption == "a red square" and image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.allclose(image, torch.tensor(RED).div(255).view(3, 1, 1).expand(3, 8, 8))
    grey, _ = ds[3]  # single-channel image converted to RGB
    assert grey.shape == (3, 8, 8) and torch.allclose(grey, torch.full_like(grey, 90 / 255))
    blue, _ = ds[0]  # JPEG: lossy, but close to the colour
    assert (blue.mean((1, 2)) * 255 - torch.tensor(BLUE)).abs().max() < 3

    assert ds[2] is None
    assert ds.skipped[str(tmp_path / "corrupt.png")].startswith("unreadable image")
    assert ds.skipped_counts == {"empty caption": 1, "no caption": 1, "unreadable image": 1}
    ds[2]  # a second failure is not counted twice
    assert len(ds.skipped) == 3

    batch = next(iter(DataLoader(Samples(ds), batch_size=4, collate_fn=collate)))
    assert batch.images.shape == (3, 3, 8, 8) and batch.captions == ["blue", "a red square", "grey"]
    assert batch.keys == ["a", "b", "grey"] and [s.reason.split(":")[0] for s in batch.skipped] == ["unreadable image"]
    empty = collate([Skip("x", "unreadable image"), Skip("y", "unreadable image")])
    assert empty.images is None and len(empty) == 0 and len(empty.skipped) == 2


def test_img2dataset_files_layout(tmp_path):
    """img2dataset's `files` output: numbered folders of {key}.jpg + {key}.txt + {key}.json."""
    for shard in range(2):
        folder = tmp_path / f"{shard:05d}"
        folder.mkdir()
        for i in range(2):
            key = f"{shard:05d}{i:04d}"
            solid(folder / f"{key}.jpg", (12, 12), RED if i else BLUE)
            (folder / f"{key}.txt").write_text(f"caption {key}")
            (folder / f"{key}.json").write_text(json.dumps({"url": "http://x", "status": "success"}))
    ds = ImageTextFolder(tmp_path, image_size=8)
    assert [ds.key(i) for i in range(len(ds))] == ["000000000", "000000001", "000010000", "000010001"]
    sample = ds.sample(3)
    assert sample.caption == "caption 000010001" and sample.image.shape == (3, 8, 8)
    assert (sample.image.mean((1, 2)) * 255 - torch.tensor(RED)).abs().max() < 3
    assert ds.skipped == {}


def test_center_crop_then_resize(tmp_path):
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)  # (h, w, 3): blue | red | blue in thirds
    pixels[:] = BLUE
    pixels[:, 10:20] = RED
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("wide")
    image, _ = ImageTextFolder(tmp_path, image_size=5)[0]
    # the centre square is the red third; downsizing 10 -> 5 averages uniform red pixels
    assert torch.allclose(image, torch.tensor(RED).div(255).view(3, 1, 1).expand(3, 5, 5), atol=1 / 255)


def test_metadata_jsonl_layout(tmp_path):
    write_shapes_folder(tmp_path, 5, format="jsonl", seed=2)
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    with (tmp_path / "metadata.jsonl").open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"file_name": "missing.png", "text": "gone"}) + "\n")
        f.write(json.dumps({"file_name": "000001.png"}) + "\n")  # no text: the earlier row stands
    (tmp_path / "000000.txt").write_text("the sidecar loses to metadata")

    ds = ImageTextFolder(tmp_path, image_size=32)
    assert len(ds) == 5
    assert [c for _, c in ds.items] == [r["text"] for r in rows]
    assert ds.skipped_counts == {"invalid JSON in metadata": 1, "metadata names a missing image": 1,
                                 "metadata row needs string 'file_name' and 'text'": 1}
    image, caption = ds[4]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    # 64 -> 32 antialiased: the background corner pixel keeps the palette colour exactly
    original = np.asarray(Image.open(tmp_path / "000004.png"))
    assert torch.allclose(image[:, 0, 0] * 255, torch.tensor(original[0, 0], dtype=torch.float32), atol=0.5)


def test_sidecar_folder_from_the_generator_round_trips(tmp_path):
    write_shapes_folder(tmp_path, 4, format="txt", seed=7)
    ds = ImageTextFolder(tmp_path, image_size=64)
    for i, (image, caption) in enumerate(ds):
        assert caption == (tmp_path / f"{i:06d}.txt").read_text().strip()
        original = torch.from_numpy(np.array(Image.open(tmp_path / f"{i:06d}.png"))).permute(2, 0, 1) / 255
        assert torch.equal(image, original)  # same size: no resampling change


def test_empty_or_uncaptioned_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=rf"no images found in {tmp_path}.*sidecar.*metadata.jsonl"):
        ImageTextFolder(tmp_path, image_size=16)
    solid(tmp_path / "lonely.png", (8, 8), RED)
    (tmp_path / "README.txt").write_text("not a caption of anything")
    with pytest.raises(ValueError, match=r"no captioned images.*1 skipped.*no caption.*metadata.jsonl"):
        ImageTextFolder(tmp_path, image_size=16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageTextFolder(tmp_path / "nope", image_size=16)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        ImageTextFolder(tmp_path, image_size=0)


def test_distributed_sampler_shards_the_dataset(tmp_path):
    write_shapes_folder(tmp_path, 7, seed=0)
    ds = ImageTextFolder(tmp_path, image_size=16)
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4  # 7 padded to 8
    assert set(shards[0]) | set(shards[1]) == set(range(7))
    again = ImageTextFolder(tmp_path, image_size=16)
    assert again.items == ds.items  # every rank sees the same order
