"""The bounds of every input `dream serve` takes, and the checks that turn request fields into a model's settings.

A failed check raises `BadInput(field, message)`: the APIs answer it as 422 (A1111, the page) or 400 (OpenAI),
naming the field and what is accepted, and never echo more than a short prefix of the value.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import TYPE_CHECKING

import click

from dream_cli.edit import fit_picture
from dream_cli.output import SAMPLER_NAMES
from dream_cli.pictures import decode_image, mask_of
from dream_cli.sampling import MAX_SEED

if TYPE_CHECKING:
    import torch

    from dalle2_core.checkpoint import SamplingSettings
    from dream_cli.serve.models import ServedModel

MAX_PROMPT = 2000  # characters (CLIP reads the first 77 tokens; a longer prompt is cut with a warning)
OPENAI_MAX_PROMPT = 1000  # what OpenAI's Images API accepts for dall-e-2
MAX_IMAGES = 10  # per request (OpenAI's n: 1..10; A1111's batch_size x n_iter)
MAX_STEPS = 150  # per stage
MAX_GUIDANCE = 30.0
MAX_PRIOR_SAMPLES = 8
MAX_BODY = 24 * 2**20  # bytes of one request body
MAX_BASE64 = 16 * 2**20  # characters of one base64 image
MAX_PIXELS = 4096 * 4096  # of one decoded picture: its header is read first, a larger one is never decoded
SEEDS = f"-1 (random) or 0..{MAX_SEED}"

# A1111's sampler names that unCLIP has no counterpart for: accepted, and the model's default sampler runs instead
A1111_ONLY_SAMPLERS = ("euler a", "euler", "lms", "heun", "dpm2", "dpm2 a", "dpm++ 2s a", "dpm++ sde", "dpm++ 2m sde heun",
                       "dpm++ 3m sde", "dpm fast", "dpm adaptive", "restart", "plms", "unipc", "lcm", "ddim cfg++")
# the request field that sets each `SamplingSettings` field
SETTING_FIELDS = {"steps": "steps", "cond_scale": "cfg_scale", "prior_steps": "prior_steps", "prior_cond_scale": "prior_cfg_scale",
                  "prior_samples": "prior_samples", "sampler": "sampler_name"}


# what each request field accepts, for messages about a value of the wrong type or out of range
ACCEPTED = {
    "prompt": f"a string of at most {MAX_PROMPT} characters",
    "negative_prompt": f"a string of at most {MAX_PROMPT} characters",
    "seed": f"an integer, {SEEDS}",
    "batch_size": f"an integer 1..{MAX_IMAGES}", "n_iter": f"an integer 1..{MAX_IMAGES}", "n": f"an integer 1..{MAX_IMAGES}",
    "steps": f"an integer 1..{MAX_STEPS} (the first decoder stage), or a list of one per decoder stage",
    "cfg_scale": f"a finite number 0..{MAX_GUIDANCE:g} (the first decoder stage), or a list of one per decoder stage",
    "prior_steps": f"an integer 1..{MAX_STEPS}", "prior_cfg_scale": f"a finite number 0..{MAX_GUIDANCE:g}",
    "prior_samples": f"an integer 1..{MAX_PRIOR_SAMPLES}",
    "width": "an integer, a size the model makes", "height": "an integer, a size the model makes",
    "init_images": "a list of one base64 image", "mask": "a base64 image", "denoising_strength": "a finite number 0..1",
    "inpainting_mask_invert": "0 or 1", "response_format": "url or b64_json", "size": "WIDTHxHEIGHT, a size the model makes",
    "image": "an image file in the multipart field 'image'", "override_settings": "an object", "send_images": "true or false",
    "sampler_name": "a sampler's name", "model": "a served model's name", "source": "the id of a result of this server",
}

OPENAI_ACCEPTED = {"prompt": f"a string of at most {OPENAI_MAX_PROMPT} characters"}


class BadInput(ValueError):
    """A request field that cannot be taken; the message says what is accepted."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def shown(value, limit: int = 60) -> str:
    """A value as an error message shows it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_prompt(prompt, field: str = "prompt", limit: int = MAX_PROMPT, required: bool = True) -> str:
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise BadInput(field, f"{shown(prompt)} is not a string")
    if len(prompt) > limit:
        raise BadInput(field, f"{len(prompt)} characters; accepted: at most {limit}")
    if required and not prompt.strip():
        raise BadInput(field, "is empty; give a non-blank prompt")
    return prompt


def check_seed(seed: int, n: int, field: str = "seed") -> int:
    """-1 draws a random seed; image i uses seed + i, which must stay a valid seed."""
    import secrets

    if seed == -1:
        seed = secrets.randbelow(2**32)
    if seed < 0 or seed + n - 1 > MAX_SEED:
        raise BadInput(field, f"{seed} with {n} image(s) is out of range; accepted: {SEEDS}")
    return seed


def pick_model(models: dict[str, ServedModel], name, default: str, field: str = "model") -> ServedModel:
    """A served model by its name (or A1111's title form `name [hash]`); never a path, never anything not served."""
    if name is None or name == "":
        return models[default]
    if isinstance(name, str):
        key = re.sub(r"\s*\[[0-9a-fA-F]{1,64}\]$", "", name.strip())
        if key in models:
            return models[key]
    raise BadInput(field, f"{shown(name)} is not a model this server serves; accepted: {', '.join(models)}")


def check_size(model: ServedModel, width: int | None, height: int | None, field: str = "width") -> tuple[int, int]:
    """(width, height) of the images: the size asked for (a side not given: the model's default), if the model makes it
    (`Pipeline.check_size`: an unCLIP cascade makes its last stage's size, Kandinsky 2.2 multiples of 64 from 256 to 1024)."""
    from dalle2_core.pipeline import SettingError

    default_w, default_h = model.pipeline.default_size
    size = (default_w if width is None else width, default_h if height is None else height)
    try:
        return model.pipeline.check_size(size)
    except SettingError:
        wrong = field if width is not None and width != default_w else ("height" if field == "width" else field)
        raise BadInput(wrong, f"{size[0]}x{size[1]}: model {model.name!r} does not make it; accepted: {model.pipeline.sizes()}") from None


def sampler_of(name) -> str | None:
    """Our sampler for a name (ours or A1111's title); None = the model's default (also for A1111's other samplers)."""
    if name is None or name == "":
        return None
    key = str(name).strip().lower()
    for ours, title in SAMPLER_NAMES.items():
        if key in (ours, title.lower()):
            return ours
    base = re.sub(r" (karras|exponential|polyexponential|sgm uniform)$", "", key)
    for ours, title in SAMPLER_NAMES.items():
        if base == title.lower():
            return ours
    if base in A1111_ONLY_SAMPLERS:
        return None
    accepted = ", ".join(SAMPLER_NAMES.values())
    raise BadInput("sampler_name", f"{shown(name)} is unknown; accepted: {accepted} (or ddpm, ddim, dpmpp, dpmpp_sde), "
                                   "or one of A1111's other samplers, which runs the model's default")


def per_stage(value, base: tuple, field: str) -> tuple | None:
    """One number sets the first decoder stage (the one that draws the picture), a list one per stage."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != len(base):
            raise BadInput(field, f"{len(value)} values for {len(base)} decoder stage(s); give one number (the first stage) or {len(base)}")
        return tuple(value)
    return (value, *base[1:])


def settings_for(model: ServedModel, *, steps=None, cfg_scale=None, prior_steps=None, prior_cfg_scale=None, prior_samples=None,
                 sampler: str | None = None, inpainting: bool = False, size: tuple[int, int] | None = None) -> SamplingSettings:
    """The model's settings with the request's over its defaults (`Pipeline.resolve`); a misfit names its field."""
    from dalle2_core.pipeline import SettingError

    base = model.defaults
    try:
        return model.pipeline.resolve(
            model.overrides, inpainting=inpainting, steps=per_stage(steps, base.steps, "steps"),
            cond_scale=per_stage(cfg_scale, base.cond_scale, "cfg_scale"), prior_steps=prior_steps,
            prior_cond_scale=prior_cfg_scale, prior_samples=prior_samples, sampler=sampler, size=size,
        )
    except SettingError as err:
        raise BadInput(SETTING_FIELDS.get(err.setting, err.setting), str(err)) from None


def decode_base64(data, field: str) -> bytes:
    """A base64 string (A1111 also takes a `data:image/...;base64,` URL) as bytes, within `MAX_BASE64`."""
    if not isinstance(data, str):
        raise BadInput(field, f"{shown(data)} is not a base64 string")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > MAX_BASE64:
        raise BadInput(field, f"{len(data)} base64 characters; accepted: at most {MAX_BASE64}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(field, "is not valid base64 (standard alphabet, padded)") from None


def _check_header(raw: bytes, field: str) -> None:
    """The picture's size from its header, before anything is decoded (a small file can claim gigapixels)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            w, h = img.size
    except Exception:  # noqa: BLE001 - PIL raises many kinds for bytes that are no image
        raise BadInput(field, "is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    if w * h > MAX_PIXELS:
        raise BadInput(field, f"is {w}x{h} ({w * h / 1e6:.0f} MP); accepted: at most {MAX_PIXELS / 1e6:.1f} MP")


def read_picture(raw: bytes, field: str) -> torch.Tensor:
    """Image file bytes as (1, 3, h, w) in [0, 1], read within bounded memory (`pictures.decode_image`)."""
    _check_header(raw, field)
    try:
        return decode_image(io.BytesIO(raw), field, option=field)
    except click.BadParameter as err:
        raise BadInput(field, err.message) from None


def read_edit(model: ServedModel, image_b64: str, mask_b64: str | None, invert: bool, size: tuple[int, int] | None = None):
    """img2img / inpainting input at the run's size (width, height; default the model's): (image (1, 3, h, w), mask
    (1, h, w) True = regenerate, or None)."""
    picture = read_picture(decode_base64(image_b64, "init_images"), "init_images")
    mask = None
    if mask_b64:
        mask, _ = mask_of(read_picture(decode_base64(mask_b64, "mask"), "mask"), picture, "mask")
        if invert:
            mask = ~mask
    return fit_picture(picture, mask, size or model.pipeline.default_size)


__all__ = [
    "MAX_BASE64", "MAX_BODY", "MAX_GUIDANCE", "MAX_IMAGES", "MAX_PIXELS", "MAX_PROMPT", "MAX_STEPS", "OPENAI_MAX_PROMPT",
    "BadInput", "check_prompt", "check_seed", "check_size", "decode_base64", "pick_model", "read_edit", "read_picture",
    "sampler_of", "settings_for", "shown",
]
