"""Tiny training data the training tests write themselves: a caption folder, webdataset shards,
a clip-retrieval embedding folder, and the tiny model sizes they train."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from dalle2_core.shapes.world import generate

TINY = {
    "clip": dict(dim_text=32, dim_image=32, dim_latent=32, text_enc_depth=1, text_seq_len=24, text_heads=2,
                 visual_enc_depth=1, visual_image_size=16, visual_patch_size=8, visual_heads=2),
    "prior_network": dict(dim=32, depth=1, dim_head=16, heads=2),
    "prior": dict(timesteps=50, sample_timesteps=4),
    "unets": [dict(dim=8, dim_mults=(1, 2), cond_dim=16, image_embed_dim=32, text_embed_dim=32, attn_heads=2,
                   attn_dim_head=8, self_attn=False)],
    "decoder": dict(timesteps=50, sample_timesteps=4),
}
# the same sizes without embedding widths: the prior and the unets follow the run's CLIP (open_clip)
TINY_ANY_WIDTH = {
    "prior_network": dict(depth=1, dim_head=16, heads=2),
    "prior": dict(timesteps=50, sample_timesteps=4),
    "unets": [dict(dim=8, dim_mults=(1, 2), cond_dim=16, attn_heads=2, attn_dim_head=8, self_attn=False)],
    "decoder": dict(timesteps=50, sample_timesteps=4),
}


def write_config(path: Path, config: dict = TINY) -> Path:
    path.write_text(json.dumps(config))
    return path


def shapes(n: int, seed: int = 0, size: int = 32):
    """(key, PNG bytes, caption) of n shapes-world images."""
    for i, sample in enumerate(generate(n, seed=seed, size=size)):
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        yield f"{i:09d}", buffer.getvalue(), sample.caption


def write_folder(root: Path, n: int = 16, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for key, png, caption in shapes(n, seed):
        (root / f"{key}.png").write_bytes(png)
        (root / f"{key}.txt").write_text(caption)
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, num_shards: int = 2, per_shard: int = 8, *, embed_dim: int | None = None,
                 corrupt: set[int] = frozenset(), seed: int = 0) -> list[Path]:
    """img2dataset-style shards {00000..}.tar: {key}.png + .txt + .json (+ .npy image embeddings);
    the samples numbered in `corrupt` get bytes that are not an image."""
    root.mkdir(parents=True, exist_ok=True)
    samples = list(shapes(num_shards * per_shard, seed))
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(num_shards):
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, (_, png, caption) in enumerate(samples[s * per_shard : (s + 1) * per_shard]):
                key, number = f"{s:05d}{i:04d}", s * per_shard + i
                _add(tar, f"{key}.png", b"\x89PNG\r\n\x1a\n broken" if number in corrupt else png)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
                if embed_dim:
                    buffer = io.BytesIO()
                    np.save(buffer, rng.standard_normal(embed_dim).astype(np.float16))
                    _add(tar, f"{key}.npy", buffer.getvalue())
        paths.append(path)
    return paths


def write_embeddings(root: Path, keys: list[str], captions: list[str], dim: int, parts: int = 2, seed: int = 0) -> Path:
    """A clip-retrieval output folder: float16, l2-normalised rows, `parts` files of each kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    for kind in ("img_emb", "text_emb", "metadata"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    for p, rows in enumerate(np.array_split(np.arange(len(keys)), parts)):
        for kind in ("img_emb", "text_emb"):
            x = rng.standard_normal((len(rows), dim)).astype(np.float32)
            np.save(root / kind / f"{kind}_{p}.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
        table = pa.table({"key": [keys[r] for r in rows], "caption": [captions[r] for r in rows]})
        pq.write_table(table, root / "metadata" / f"metadata_{p}.parquet")
    return root


def write_work(root: Path) -> Path:
    """The data most training tests use: folder/ (16 images), shards/ (2 x 8, sample 5 corrupt),
    embeddings/ (width 32, keyed like the folder's files), tiny.json and any_width.json."""
    write_folder(root / "folder", 16)
    write_shards(root / "shards", 2, 8, corrupt={5})
    samples = list(shapes(16))
    write_embeddings(root / "embeddings", [k for k, _, _ in samples], [c for _, _, c in samples], dim=32)
    write_config(root / "tiny.json", TINY)
    write_config(root / "any_width.json", TINY_ANY_WIDTH)
    return root
