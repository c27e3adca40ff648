"""Training data throughput: webdataset shards against an image folder, read the way `dream train` reads them.

    python benchmarks/train_data.py                      # 512 shapes-world PNGs (64 px), batch 32
    python benchmarks/train_data.py --images 1024 --workers 0 2

For each source and DataLoader worker count: seconds until the first batch arrives (start-up: folder
scan or shard open, worker start, shuffle-buffer fill), then images/s over the following batches
(steady state). Writes benchmarks/results/train-data.md and .json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _write_data(root: Path, n: int, per_shard: int) -> tuple[Path, str]:
    """The same n samples as a caption folder and as img2dataset-style shards."""
    from dalle2_core.shapes.world import generate

    folder, shards = root / "folder", root / "shards"
    folder.mkdir()
    shards.mkdir()
    samples = []
    for i, sample in enumerate(generate(n, seed=0, size=64)):
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        key = f"{i // per_shard:05d}{i % per_shard:04d}"
        (folder / f"{key}.png").write_bytes(buffer.getvalue())
        (folder / f"{key}.txt").write_text(sample.caption)
        samples.append((key, buffer.getvalue(), sample.caption.encode()))
    count = (n + per_shard - 1) // per_shard
    for s in range(count):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for key, png, caption in samples[s * per_shard : (s + 1) * per_shard]:
                for name, data in ((f"{key}.png", png), (f"{key}.txt", caption)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder, str(shards / f"{{00000..{count - 1:05d}}}.tar")


def _measure(data, args, workers: int) -> dict:
    from dalle2_core.train.feed import micro_batches, open_data
    from dalle2_core.train.settings import TrainSettings

    settings = TrainSettings(out=Path("unused"), data=data, batch_size=args.batch, num_workers=workers,
                             shuffle_buffer=args.shuffle_buffer)
    start = time.perf_counter()
    source = open_data(settings, 64, 1, prior=False, text_needed=False).images
    batches = micro_batches(source, settings, 0, image_size=64)
    first = next(batches)
    to_first = time.perf_counter() - start
    steady_start, images = time.perf_counter(), 0
    for _ in range(args.batches):
        images += len(next(batches))
    steady = images / (time.perf_counter() - steady_start)
    return dict(first_batch_s=to_first, first_batch_images=len(first), steady_images_per_s=steady, steady_batches=args.batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="batches timed after the first")
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = _write_data(Path(tmp), args.images, args.per_shard)
        for workers in args.workers:
            for name, data in (("folder", folder), ("shards", shards)):
                rows.append(dict(source=name, workers=workers, **_measure(data, args, workers)))
                print(json.dumps(rows[-1]))
    result = dict(date=datetime.now().isoformat(timespec="minutes"), command=" ".join(["python", *sys.argv]),
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
                  load_average_start=load, load_average_end=os.getloadavg(), images=args.images, per_shard=args.per_shard,
                  batch=args.batch, shuffle_buffer=args.shuffle_buffer, rows=rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train-data.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(f"| {r['source']} | {r['workers']} | {r['first_batch_s']:.2f} | {r['steady_images_per_s']:.0f} |" for r in rows)
    (RESULTS / "train-data.md").write_text(
        "# Training data throughput: shards vs folder\n\n"
        f"- Command: `{result['command']}`\n- Date: {result['date']}; {result['machine']}; load average at start "
        f"{load[0]:.1f}, at end {result['load_average_end'][0]:.1f}\n"
        f"- {args.images} shapes-world PNGs (64 px, decoded at 64 px), batch {args.batch}; shards of "
        f"{args.per_shard} samples, shuffle buffer {args.shuffle_buffer}; steady state over {args.batches} batches\n\n"
        "| source | loader workers | s to the first batch | images/s after |\n|---|---|---|---|\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
