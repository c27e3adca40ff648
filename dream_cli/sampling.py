"""The glue behind `dream PROMPT`: device and precision, model loading, settings, progress, stages."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import torch

import dalle2_core
from dalle2_core.checkpoint import Model, ModelLoadError, load_model
from dalle2_core.helpers import default, exists
from dalle2_core.hub import ResolvedModel, resolve_model
from dream_cli.errors import DreamError, one_line

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- where and how to run ----------------------------------------------------------------------------


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """`auto` is cuda, then mps, then cpu; asking for an absent accelerator is a usage error."""
    available = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if _mps_available() else [])
    if name == "auto":
        name = "cuda" if "cuda" in available else "mps" if "mps" in available else "cpu"
    if name not in available:
        raise click.BadParameter(
            f"{name} is not available on this machine (torch sees no {name} device); accepted here: {', '.join(available)}",
            param_hint="--device",
        )
    return torch.device(name)


def pick_dtype(precision: str, device_name: str) -> torch.dtype:
    dtype = PRECISIONS[precision]
    if dtype == torch.float16 and pick_device(device_name).type == "cpu":
        raise click.BadParameter("fp16 is not supported on cpu; accepted on cpu: fp32, bf16", param_hint="--precision")
    return dtype


def check_outdir(outdir: Path) -> Path:
    """Create `outdir` if needed and prove it is writable before any sampling starts."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as err:
        reason = err.strerror or one_line(err)
        raise DreamError(f"cannot write to --outdir {str(outdir)!r}: {reason}") from None
    return outdir


def load_image(path: Path) -> torch.Tensor:
    """An image file as a (1, 3, h, w) float tensor in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise click.BadParameter(f"{str(path)!r} is not a readable image ({one_line(err)})", param_hint="--image") from None
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    # (h*w*3,) -> (1, 3, h, w)
    return pixels.view(rgb.height, rgb.width, 3).permute(2, 0, 1)[None].float() / 255


def load(spec: str, device: torch.device, dtype: torch.dtype, quiet: bool) -> tuple[Model, ResolvedModel]:
    try:
        resolved = resolve_model(spec, progress=not quiet)
        model = load_model(resolved.path, device=device, dtype=dtype)
    except ModelLoadError as err:
        raise DreamError(one_line(err)) from None
    if model.decoder is None:
        raise DreamError(f"model {resolved.spec!r} has no decoder ({resolved.path}), so it cannot make images")
    return model, resolved


# --- sampling settings -------------------------------------------------------------------------------


class SettingError(ValueError):
    def __init__(self, message: str, param_hint: str):
        super().__init__(message)
        self.param_hint = param_hint


def _decoder_default_steps(decoder) -> tuple[int, ...]:
    cfg = decoder.config
    return tuple(default(s, cfg.diffusion.timesteps) for s in cfg.per_unet(cfg.diffusion.sample_timesteps))


def _per_unet(values, n: int, hint: str) -> tuple:
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SettingError(f"{','.join(map(str, values))} has {len(values)} values but the model has {n} unet(s); give 1 or {n}", hint)
    return values


@dataclass(frozen=True)
class Settings:
    """The sampling settings of one run: options given, else the model folder's defaults."""

    cond_scale: tuple[float, ...]
    prior_cond_scale: float
    prior_samples: int
    steps: tuple[int, ...]
    prior_steps: int | None
    sampler: str

    OPTIONS = ("cond_scale", "prior_cond_scale", "prior_samples", "steps", "prior_steps", "sampler")

    @classmethod
    def resolve(cls, model: Model, **given) -> Settings:
        d, decoder, prior = model.defaults, model.decoder, model.prior
        n = decoder.config.num_unets
        steps = _per_unet(default(given["steps"], default(d.steps, _decoder_default_steps(decoder))), n, "--steps")
        timesteps = decoder.config.diffusion.timesteps
        if max(steps) > timesteps:
            raise SettingError(f"{max(steps)} exceeds the decoder's {timesteps} training timesteps; accepted: 1..{timesteps}", "--steps")
        prior_steps = None
        if exists(prior):
            prior_steps = default(given["prior_steps"], default(d.prior_steps, prior.config.sample_timesteps or prior.config.timesteps))
            if prior_steps > prior.config.timesteps:
                raise SettingError(
                    f"{prior_steps} exceeds the prior's {prior.config.timesteps} training timesteps; accepted: 1..{prior.config.timesteps}",
                    "--prior-steps",
                )
        return cls(
            cond_scale=tuple(float(v) for v in _per_unet(default(given["cond_scale"], d.cond_scale), n, "--cond-scale")),
            prior_cond_scale=float(default(given["prior_cond_scale"], d.prior_cond_scale)),
            prior_samples=default(given["prior_samples"], d.prior_samples),
            steps=tuple(int(v) for v in steps),
            prior_steps=prior_steps,
            sampler=default(given["sampler"], d.sampler),
        )

    def metadata(self, resolved: ResolvedModel, precision: str, device: str) -> dict:
        return {
            "model": resolved.spec,
            "model_source": resolved.source,
            "model_path": str(resolved.path.resolve()),
            "model_revision": resolved.revision,
            "sampler": self.sampler,
            "cond_scale": list(self.cond_scale),
            "steps": list(self.steps),
            "prior_cond_scale": self.prior_cond_scale,
            "prior_samples": self.prior_samples,
            "prior_steps": self.prior_steps,
            "precision": precision,
            "device": device,
            "dalle2_core_version": dalle2_core.__version__,
        }


# --- progress and warnings ---------------------------------------------------------------------------


class Progress:
    """One rich progress bar per stage (prior, each unet) on stderr; silent when quiet."""

    def __init__(self, quiet: bool, s: Settings, decoder_runs: int, prior_runs: int):
        self.bar = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.bar = RichProgress(
            TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        # the prior samples all its steps inside one call, so its bar counts calls
        self.prior = self.bar.add_task("prior", total=prior_runs) if prior_runs else None
        self.unets = [self.bar.add_task(f"unet {i + 1}", total=steps * decoder_runs) for i, steps in enumerate(s.steps)]

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def prior_done(self) -> None:
        if self.bar is not None and self.prior is not None:
            self.bar.advance(self.prior)

    def unet_step(self, unet_number: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.unets[unet_number - 1])


@contextlib.contextmanager
def surface_warnings(everything: bool = False):
    """Show dalle2_core's warnings (e.g. a prompt cut to the CLIP context) as one line each on stderr.

    Other libraries' warnings are shown only with `everything` (--debug).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            shown = set()
            for w in caught:
                message = one_line(w.message)
                from_library = "dalle2_core" in str(w.filename) or type(w.message).__module__.startswith("dalle2_core")
                if (from_library or everything) and message not in shown:
                    shown.add(message)
                    click.echo(f"Warning: {message}", err=True)


# --- the stages --------------------------------------------------------------------------------------


def _adapter(model: Model):
    from dalle2_core.clip import CLIP, ClipAdapter, XClipAdapter

    for module in (model.prior, model.decoder, model.clip):
        clip = module if module is model.clip else getattr(module, "clip", None)
        if isinstance(clip, ClipAdapter):
            return clip
        if isinstance(clip, CLIP):
            return XClipAdapter(clip)
    raise DreamError("this model has no CLIP, so images cannot be embedded for --image or interpolation")


@torch.inference_mode()
def embed_image(model: Model, picture: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The CLIP image embedding (1, d) of a [0, 1] picture."""
    return _adapter(model).embed_image(picture.to(device=device, dtype=dtype)).image_embed


@contextlib.contextmanager
def _option_conflicts():
    """The library's ValueErrors while sampling name an option this model can't take: one line, exit 1."""
    try:
        yield
    except ValueError as err:
        raise DreamError(one_line(err)) from None


def per_image_generators(first_seed: int, count: int, device) -> list[torch.Generator]:
    """One generator per image, seeded first_seed, first_seed + 1, ...: an image's noise does not
    depend on the batch it is drawn in."""
    return [torch.Generator(device=device).manual_seed(first_seed + j) for j in range(count)]


@torch.inference_mode()
@_option_conflicts()
def prior_embed(model: Model, texts: list[str], s: Settings, generator, progress: Progress) -> torch.Tensor:
    embeds = model.prior.sample(
        text=texts,
        num_samples_per_batch=s.prior_samples,
        cond_scale=s.prior_cond_scale,
        steps=s.prior_steps,
        sampler=s.sampler,
        generator=generator,
    )
    progress.prior_done()
    return embeds


@torch.inference_mode()
@_option_conflicts()
def decode(model: Model, embeds: torch.Tensor, texts: list[str] | None, s: Settings, generator, progress: Progress) -> torch.Tensor:
    """Images (b, c, h, w) in [0, 1] from image embeddings, through every unet of the cascade."""
    decoder = model.decoder
    on_text = decoder.config.conditioning.condition_on_text_encodings
    return decoder.sample(
        image_embed=None if decoder.config.conditioning.unconditional else embeds,
        batch_size=embeds.shape[0],
        text=texts if on_text else None,
        cond_scale=s.cond_scale,
        sampler=s.sampler,
        steps=s.steps,
        generator=generator,
        on_step=lambda unet_number, *_: progress.unet_step(unet_number),
    )
