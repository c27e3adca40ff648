"""A finished job's images: PNGs with the metadata `dream` writes, kept for a while for URLs and the page's gallery.

Each image is encoded once (A1111 `parameters` and `dream-dalle2` chunks), written to `--outdir` when the server has
one (never over an existing file), and kept in a `ResultStore` under an unguessable id: `/files/{id}.png` serves it
until it expires, as OpenAI's image URLs do.
"""

from __future__ import annotations

import io
import itertools
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dream_cli.generate import _command_line
from dream_cli.output import a1111_parameters, png_text, save_png, slugify, to_pil
from dream_cli.serve.engine import Job

UPLOADED = "(sent with the request)"  # where an edit's or a variation's source picture came from


@dataclass
class Result:
    id: str
    png: bytes
    model: str  # the served model's name
    prompt: str
    info: dict  # the `dream-dalle2` chunk: everything needed to regenerate the image
    created: float
    expires: float
    job: int  # which job made it (the images of one request share it)

    @property
    def parameters(self) -> str:
        """A1111's infotext of the image (its `parameters` chunk)."""
        return a1111_parameters(self.prompt, self.info)


class ResultStore:
    """The newest `max_items` results, each for `ttl` seconds; thread-safe (the worker adds, requests read)."""

    def __init__(self, max_items: int = 256, ttl: float = 3600.0):
        self.max_items, self.ttl = max_items, ttl
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()
        self._jobs = itertools.count()

    def new_job(self) -> int:
        return next(self._jobs)

    def add(self, png: bytes, model: str, prompt: str, info: dict, job: int = -1) -> Result:
        now = time.time()
        result = Result(secrets.token_urlsafe(18), png, model, prompt, info, now, now + self.ttl, job)
        with self._lock:
            self._items[result.id] = result
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return result

    def get(self, result_id: str) -> Result | None:
        with self._lock:
            self._expire()
            result = self._items.get(result_id)
            return result if result is not None and result.expires > time.time() else None

    def recent(self, limit: int = 100) -> list[Result]:
        """The newest results: the newest job first, each job's images in their order."""
        with self._lock:
            self._expire()
            newest = list(reversed(self._items.values()))[:limit]
        return sorted(newest, key=lambda r: (-r.job, r.info.get("index", 0)))

    def _expire(self) -> None:
        now = time.time()
        while self._items and next(iter(self._items.values())).expires <= now:
            self._items.popitem(last=False)


def encode_png(image, text: dict[str, str]) -> bytes:
    """A (c, h, w) image in [0, 1] as PNG bytes with text chunks (the pixels `save_png` writes)."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for key, value in text.items():
        meta.add_text(key, value)
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


def job_metadata(job: Job) -> dict:
    """What every image of the job records, as `dream` records a run (`generate.Run`)."""
    info = {**job.model.metadata(job.settings), "base_seed": job.seed, "num": job.n, "negative_prompt": job.negative_prompt,
            "kind": job.kind}
    if job.edit is not None:
        info.update(init_image=UPLOADED, strength=job.edit.strength, mask=UPLOADED if job.edit.mask is not None else None)
    if job.kind == "variations":
        info["image"] = UPLOADED
    return info


def keep(job: Job, store: ResultStore, outdir: Path | None) -> list[Result]:
    """The job's images encoded, stored and (with an outdir) written; on the worker thread."""
    base = job_metadata(job)
    extra = ["--negative-prompt", job.negative_prompt] if job.negative_prompt else []
    stem = slugify(job.prompt if job.prompt.strip() else "variation")
    results, number = [], store.new_job()
    for i, (image, seed) in enumerate(job.results):
        info = {**base, "seed": seed, "index": i, "size": [image.shape[-1], image.shape[-2]]}
        if job.kind == "txt2img":  # the command that makes this image again
            info["command"] = _command_line(job.prompt, job.model.public_resolved(), job.settings, seed, extra)
        text = png_text(job.prompt, info)
        if outdir is not None:
            save_png(image, outdir, f"{stem}-{job.seed}-{i}", text)
        results.append(store.add(encode_png(image, text), job.model.name, job.prompt, info, number))
    return results


__all__ = ["Result", "ResultStore", "encode_png", "job_metadata", "keep"]
