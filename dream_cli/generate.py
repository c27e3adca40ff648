"""`dream PROMPT` (the default command) and `dream interpolate A B`: parse options, call dalle2_core."""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path

import click
import torch

from dalle2_core.diffusion import SAMPLERS
from dream_cli.errors import DreamError
from dream_cli.output import make_grid, png_text, save_png, slugify
from dream_cli.sampling import (
    DEVICES,
    PRECISIONS,
    Progress,
    SettingError,
    Settings,
    check_outdir,
    decode,
    embed_image,
    load,
    load_image,
    per_image_generators,
    pick_device,
    pick_dtype,
    prior_embed,
    surface_warnings,
)

MAX_SEED = 2**63 - 1


class NumberList(click.ParamType):
    """One number or a comma-separated list (`3` or `3,1`): finite, >= `minimum`."""

    def __init__(self, kind: type = float, minimum: float = 0, single: bool = False):
        self.kind, self.minimum, self.single = kind, minimum, single
        what = "an integer" if kind is int else "a finite number"
        self.accepted = f"{what} >= {minimum:g}" + ("" if single else ", or one per unet separated by commas (3,1)")
        self.name = "N" if single else "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, int, float)):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if self.single and len(parts) != 1:
            self.fail(f"{value!r}: expected {self.accepted}", param, ctx)
        numbers = []
        for part in parts:
            try:
                number = self.kind(part)
            except ValueError:
                self.fail(f"{value!r}: expected {self.accepted}", param, ctx)
            if number != number or number in (float("inf"), float("-inf")) or number < self.minimum:
                self.fail(f"{value!r}: expected {self.accepted}", param, ctx)
            numbers.append(number)
        return numbers[0] if self.single else tuple(numbers)


def sampling_options(f):
    """Options shared by `dream PROMPT` and `dream interpolate`."""
    options = [
        click.option("--seed", type=click.IntRange(0, MAX_SEED), help="Random seed (random if omitted); image i uses seed + i."),
        click.option("--cond-scale", type=NumberList(float), help="Decoder guidance: one value or one per unet (3,1). [model default]"),
        click.option("--prior-cond-scale", type=NumberList(float, single=True), help="Prior guidance. [model default]"),
        click.option("--prior-samples", type=click.IntRange(min=1),
                     help="Prior candidates per image; the most text-like is kept. [model default: 2]"),
        click.option("--steps", type=NumberList(int, minimum=1), help="Decoder sampling steps: one value or one per unet. [model default]"),
        click.option("--prior-steps", type=click.IntRange(min=1), help="Prior sampling steps. [model default]"),
        click.option("--sampler", type=click.Choice(list(SAMPLERS)), help="Sampler. [model default]"),
        click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True),
        click.option("--model", "model_spec", envvar="DREAM_MODEL", default="laion", show_default=True,
                     help="Model folder, Hugging Face repo org/name[@revision], 'shapes' (bundled, offline) or 'laion'. [env DREAM_MODEL]"),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or info lines (paths are still printed)."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _settings(model, opts: dict) -> Settings:
    try:
        return Settings.resolve(model, **{k: opts[k] for k in Settings.OPTIONS})
    except SettingError as err:  # a per-unet list or step count that doesn't fit this model
        raise click.BadParameter(str(err), param_hint=err.param_hint) from None


def _command_line(prompt: str, resolved, s: Settings, seed: int, extra: list[str]) -> str:
    """The command that regenerates one image (its own seed, alone)."""
    # a local folder by absolute path, a Hub repo pinned to the commit that was used
    spec = {"local": str(resolved.path.resolve()), "hub": f"{resolved.spec.split('@')[0]}@{resolved.revision}"}.get(
        resolved.source, resolved.spec
    )
    args = ["dream", "--model", spec, "--seed", str(seed), "-n", "1"]
    args += ["--sampler", s.sampler, "--cond-scale", ",".join(f"{v:g}" for v in s.cond_scale)]
    args += ["--steps", ",".join(map(str, s.steps))]
    if s.prior_steps is not None:
        args += ["--prior-steps", str(s.prior_steps), "--prior-cond-scale", f"{s.prior_cond_scale:g}"]
        args += ["--prior-samples", str(s.prior_samples)]
    return shlex.join([*args, *extra, "--", prompt] if prompt else [*args, *extra])


@click.command("generate", hidden=True)
@click.argument("prompt", nargs=-1)
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True, help="Number of images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per forward pass; every image keeps its own seed, so it is reproducible alone.")
@click.option("--grid/--no-grid", default=False, show_default=True, help="Also write all images as one grid.")
@click.option("--image", type=click.Path(path_type=Path), help="Variations of this image: its CLIP embedding replaces the prior.")
@sampling_options
def generate(prompt: tuple[str, ...], num: int, batch_size: int, grid: bool, image: Path | None, **opts) -> None:
    """Generate images from PROMPT (text to image with DALL-E 2)."""
    text = " ".join(prompt)
    if not text.strip() and image is None:
        raise click.BadParameter(f"{text!r} is empty; give a non-blank prompt (or --image for variations)", param_hint="PROMPT")
    device, dtype = pick_device(opts["device"]), pick_dtype(opts["precision"], opts["device"])
    picture = load_image(image) if image is not None else None
    outdir = check_outdir(opts["outdir"])
    seed = opts["seed"] if opts["seed"] is not None else secrets.randbelow(2**32)
    if seed + num - 1 > MAX_SEED:
        raise click.BadParameter(f"{seed} + {num} images exceeds the largest seed {MAX_SEED}", param_hint="--seed")
    quiet = opts["quiet"]

    with surface_warnings(everything=opts["debug"]):
        model, resolved = load(opts["model_spec"], device, dtype, quiet)
        s = _settings(model, opts)
        unconditional = model.decoder.config.conditioning.unconditional
        if unconditional:
            picture = None  # nothing conditions the images: no prior, no image embedding
        elif picture is None and model.prior is None:
            raise DreamError(f"model {resolved.spec!r} has no prior, so it cannot generate from text; use --image")
        if not quiet:
            click.echo(f"seed {seed}  model {resolved.spec}  device {device}  {opts['precision']}", err=True)
        image_embed = embed_image(model, picture, device, dtype) if picture is not None else None
        extra = ["--image", str(image.resolve())] if image is not None else []
        slug = slugify(text if text.strip() else image.stem)
        saved, tensors = [], []
        batches = -(-num // batch_size)
        with Progress(quiet, s, decoder_runs=batches, prior_runs=0 if unconditional or picture is not None else batches) as progress:
            for start in range(0, num, batch_size):
                b = min(batch_size, num - start)
                generator = per_image_generators(seed + start, b, device)  # image i: seed + i, whatever the batching
                if unconditional:
                    embeds = torch.zeros(b, 0, device=device)  # only its batch size is used
                elif image_embed is None:
                    embeds = prior_embed(model, [text] * b, s, generator, progress)
                else:
                    embeds = image_embed.expand(b, -1)
                images = decode(model, embeds, [text] * b if text.strip() else None, s, generator, progress)
                for j, img in enumerate(images):
                    i = start + j
                    info = {
                        **s.metadata(resolved, opts["precision"], str(device)),
                        "seed": seed + i, "base_seed": seed, "index": i, "num": num, "batch_size": batch_size,
                        "image": str(image.resolve()) if image is not None else None,
                        "size": [img.shape[-1], img.shape[-2]],
                        "command": _command_line(text, resolved, s, seed + i, extra),
                    }
                    path = save_png(img, outdir, f"{slug}-{seed}-{i}", png_text(text, info))
                    click.echo(str(path))
                    saved.append(path)
                if grid:
                    tensors.append(images.cpu())
    if grid and len(saved) > 1:
        all_images = torch.cat(tensors)
        info = {**s.metadata(resolved, opts["precision"], str(device)), "seed": seed, "num": num,
                "batch_size": batch_size, "size": [all_images.shape[-1], all_images.shape[-2]], "grid": True}
        click.echo(str(save_png(make_grid(all_images), outdir, f"{slug}-{seed}-grid", png_text(text, info))))


@click.command("interpolate")
@click.argument("a")
@click.argument("b")
@click.option("--frames", type=click.IntRange(min=2), default=8, show_default=True, help="Frames from A to B, ends included.")
@sampling_options
def interpolate(a: str, b: str, frames: int, **opts) -> None:
    """Render a spherical interpolation (slerp) between A and B: two prompts or image paths."""
    from dalle2_core.dalle2 import slerp

    ends = []
    for name, value in (("A", a), ("B", b)):
        if not value.strip():
            raise click.BadParameter(f"{value!r} is empty; give a prompt or an image path", param_hint=name)
        ends.append(load_image(Path(value)) if Path(value).is_file() else value)
    device, dtype = pick_device(opts["device"]), pick_dtype(opts["precision"], opts["device"])
    outdir = check_outdir(opts["outdir"])
    seed = opts["seed"] if opts["seed"] is not None else secrets.randbelow(2**32)
    quiet = opts["quiet"]

    with surface_warnings(everything=opts["debug"]):
        model, resolved = load(opts["model_spec"], device, dtype, quiet)
        s = _settings(model, opts)
        if not quiet:
            click.echo(f"seed {seed}  model {resolved.spec}  device {device}  {opts['precision']}", err=True)
        texts = [e if isinstance(e, str) else None for e in ends]
        with Progress(quiet, s, decoder_runs=frames, prior_runs=sum(map(bool, texts))) as progress:
            embeds = []
            for end in ends:
                generator = torch.Generator(device=device).manual_seed(seed)
                if isinstance(end, str):
                    if model.prior is None:
                        raise DreamError(f"model {resolved.spec!r} has no prior, so {end!r} cannot be embedded; give images")
                    embeds.append(prior_embed(model, [end], s, generator, progress))
                else:
                    embeds.append(embed_image(model, end, device, dtype))
            label = " to ".join(e if isinstance(e, str) else Path(v).stem for e, v in zip(ends, (a, b)))
            slug = slugify(label)
            for i in range(frames):
                t = i / (frames - 1)
                embed = slerp(embeds[0], embeds[1], t)
                # the text of the nearer end conditions the decoder (text encodings cannot be slerped)
                text = texts[0] if t < 0.5 else texts[1]
                # the same noise for every frame, so only the embedding changes along the path
                generator = torch.Generator(device=device).manual_seed(seed)
                images = decode(model, embed, [text] if text else None, s, generator, progress)
                info = {**s.metadata(resolved, opts["precision"], str(device)), "seed": seed, "index": i,
                        "frames": frames, "t": t, "a": a, "b": b, "size": [images.shape[-1], images.shape[-2]]}
                click.echo(str(save_png(images[0], outdir, f"{slug}-{seed}-{i}", png_text(label, info))))
