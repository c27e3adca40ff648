"""Writing generated images: file names, PNG metadata (A1111 `parameters` + `dream` JSON), grids."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dalle2_core.atomic import atomic_path
from dream_cli import interrupt
from dream_cli.errors import DreamError, one_line

if TYPE_CHECKING:
    import torch
    from PIL import Image


# torch and PIL are imported where they are used: `dream --help` loads neither

SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM++ 2M", "dpmpp_sde": "DPM++ 2M SDE"}  # as A1111 readers expect them


def slugify(text: str, max_len: int = 48) -> str:
    """A file-name-safe, lower-case stem from a prompt ("image" when nothing is left)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "image"


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (c, h, w) tensor in [0, 1] as an 8-bit PIL image (c = 1, 3 or 4), rounded to the nearest level."""
    import torch
    from PIL import Image

    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image tensor (1|3|4, h, w), got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    # (h, w) for one channel ("L"), (h, w, c) for RGB / RGBA: PIL's own array layouts
    return Image.fromarray(pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).contiguous().numpy())


def make_grid(images: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) images tiled row-major into one (c, rows*h, cols*w) image, cols = ceil(sqrt(b)), black padding."""
    from torchvision.utils import make_grid as tile

    return tile(images, nrow=math.ceil(math.sqrt(images.shape[0])), padding=0)


def _join(values) -> str:
    # per-stage values joined with '/', which A1111 readers keep inside one field
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _a1111_value(value) -> str:
    """A field value as A1111 writes it: JSON-quoted when it holds a comma, a colon or a line break."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(prompt: str, info: dict) -> str:
    """The `parameters` chunk exactly as A1111 writes it: the prompt, a `Negative prompt:` line when there is
    one, then `Key: value` pairs joined with ", " (values with `,` `:` or newlines JSON-quoted)."""
    steps, scales = info["steps"], info["cond_scale"]
    fields = {
        "Steps": steps[0],
        "Sampler": SAMPLER_NAMES.get(info["sampler"], info["sampler"]),
        **({"Schedule type": info["spacing"].capitalize()} if info.get("spacing") else {}),
        "CFG scale": f"{scales[0]:g}",
        "Seed": info["seed"],
        "Size": f"{info['size'][0]}x{info['size'][1]}",
    }
    if info.get("model_hash"):
        fields["Model hash"] = info["model_hash"][:10]
    fields["Model"] = info["model"]
    if info.get("strength") is not None and info.get("init_image") and not info.get("mask") and not info.get("outpaint"):
        fields["Denoising strength"] = f"{info['strength']:g}"
    if len(steps) > 1 or len(scales) > 1:
        fields["Decoder steps"] = _join(steps)
        fields["Decoder CFG scale"] = _join(scales)
    if info.get("t") is not None:
        fields["Interpolation t"] = f"{info['t']:g}"
    if info.get("prior_steps") is not None:
        fields["Prior steps"] = info["prior_steps"]
        fields["Prior CFG scale"] = f"{info['prior_cond_scale']:g}"
        fields["Prior samples"] = info["prior_samples"]
    fields["Version"] = f"dream {info['dalle2_core_version']}"
    lines = [prompt]
    if info.get("negative_prompt"):
        lines.append(f"Negative prompt: {info['negative_prompt']}")
    lines.append(", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def _candidates(outdir: Path, stem: str):
    yield outdir / f"{stem}.png"
    n = 1
    while True:
        yield outdir / f"{stem}_{n}.png"
        n += 1


def save_png(image: torch.Tensor, outdir: Path, stem: str, text: dict[str, str]) -> Path:
    """Write `image` as `{stem}.png` (or `{stem}_1.png`, ... if taken) with tEXt chunks; never overwrites.

    The file appears complete or not at all (temporary file, then a no-overwrite rename).
    """
    from PIL.PngImagePlugin import PngInfo

    if interrupt.happened():  # Ctrl-C that something swallowed: write nothing more
        raise interrupt.Interrupted()
    pil = to_pil(image)
    meta = PngInfo()
    for key, value in text.items():
        meta.add_text(key, value)
    for path in _candidates(outdir, stem):
        if path.exists():
            continue
        try:
            with atomic_path(path, overwrite=False) as tmp:
                pil.save(tmp, format="PNG", pnginfo=meta)
            return path
        except FileExistsError:  # taken between the check and the rename: try the next name
            continue
        except OSError as err:  # full disk, lost permissions: say which file, nothing is left behind
            raise DreamError(f"cannot write {str(path)!r}: {err.strerror or one_line(err)}") from None
    raise AssertionError("unreachable")


def weights_sha256(path: Path) -> str | None:
    """The sha256 of a weights file (model sites match images to models by its first 10 hex digits), cached
    per file size and modification time under the dream cache; None when there is no such file."""
    import hashlib

    from dalle2_core.hub import dream_cache_dir

    try:
        stat = path.stat()
    except OSError:
        return None
    cache_file = dream_cache_dir() / "weights-sha256.json"
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), dict) and cache[key].get("stamp") == stamp:
        return cache[key]["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    try:  # a cache that cannot be written only costs the hash next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(cache))
    except OSError:
        pass
    return cache[key]["sha256"]


SETTINGS_CHUNK = "dream-dalle2"  # not "dream": scanners read a chunk of that name as old InvokeAI metadata
LEGACY_SETTINGS_CHUNK = "dream"


def png_text(prompt: str, info: dict) -> dict[str, str]:
    """The two text chunks: A1111 `parameters` and ours (JSON with everything needed to regenerate)."""
    return {"parameters": a1111_parameters(prompt, info), SETTINGS_CHUNK: json.dumps({"prompt": prompt, **info})}


def read_png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return dict(img.text)


EXIF_USER_COMMENT = 0x9286


def _exif_comment(img) -> str | None:
    """EXIF UserComment (where A1111 and copying tools put text in JPEG and WebP), without its 8-byte charset code."""
    raw = img.getexif().get_ifd(0x8769).get(EXIF_USER_COMMENT)
    if isinstance(raw, bytes):
        code, body = raw[:8], raw[8:]
        return body.decode("utf-16-be" if code.startswith(b"UNICODE") else "utf-8", errors="replace").rstrip("\x00")
    return raw if isinstance(raw, str) else None


def read_stored_text(path: Path) -> tuple[str, dict[str, str]]:
    """(format, text it carries): a PNG's text chunks; a JPEG's, WebP's or GIF's comment and EXIF UserComment."""
    from PIL import Image

    with Image.open(path) as img:
        if img.format == "PNG":
            img.load()
            return img.format, dict(img.text)
        texts = {}
        comment = img.info.get("comment")
        if isinstance(comment, bytes):
            comment = comment.decode("utf-8", errors="replace")
        if comment:
            texts["comment"] = comment
        if user := _exif_comment(img):
            texts["UserComment"] = user
        return img.format or path.suffix.lstrip(".").upper(), texts


def _settings_in(format: str, texts: dict[str, str]) -> tuple[str | None, str]:
    """(the stored settings JSON, where it was): our chunk in a PNG, else a comment that is a JSON object."""
    if format == "PNG":
        for key in (SETTINGS_CHUNK, LEGACY_SETTINGS_CHUNK):
            if key in texts:
                return texts[key], f"{key!r} text chunk"
        return None, f"no {SETTINGS_CHUNK!r} text chunk"
    for key, text in texts.items():
        if text.lstrip().startswith("{"):
            return text, f"{format} {key}"
    return None, f"a {format} carries them only in its comment or EXIF UserComment, and this one holds none"


def read_settings(path: Path, option: str = "IMAGE") -> dict:
    """The settings dream stored in an image: our PNG chunk (or the one older versions wrote), or a JSON object in
    another format's comment (where a tool that copied them put it)."""
    from dream_cli.pictures import check_regular_file

    check_regular_file(path, option)
    try:
        format, texts = read_stored_text(path)
    except (OSError, ValueError, SyntaxError) as err:
        raise click.BadParameter(f"{str(path)!r} is not a readable image ({one_line(err)})", param_hint=option) from None
    raw, where = _settings_in(format, texts)
    if raw is None:
        raise click.BadParameter(f"{str(path)!r} holds no dream settings ({where})", param_hint=option)
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"{str(path)!r}: its {where} is malformed (not JSON: {err.msg})", param_hint=option) from None
    if not isinstance(settings, dict):
        raise click.BadParameter(f"{str(path)!r}: its {where} is malformed (a JSON {type(settings).__name__}, not an object)",
                                 param_hint=option)
    return settings
