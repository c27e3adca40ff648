"""`dream interpolate A B`, `dream mix ITEMS...` and `dream upscale IMAGES...`: parse options, call the pipeline,
write files.

An interpolation end or a mix item is an image when it names an existing file or looks like a path (an image
suffix, or a path separator in a word without spaces); such an item that is not a readable image is an error,
never a prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dream_cli.generate import note, run_metadata
from dream_cli.output import png_text, save_png, slugify
from dream_cli.pictures import file_size, load_image
from dream_cli.sampling import Progress, cpu_estimate, opening, per_image_generators, sampling_errors, sampling_options

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_FRAMES = 10_000  # ~5.5 minutes at 30 frames a second; each frame is decoded and written as it is made


def looks_like_path(value: str) -> bool:
    """An image suffix, or a path separator in a word without spaces ('photos/cat', './a'); 'red/blue cube' is a prompt."""
    separator = "/" in value or "\\" in value
    return Path(value).suffix.lower() in IMAGE_SUFFIXES or (separator and not any(c.isspace() for c in value))


def _picture_or_prompt(value: str, option: str) -> torch.Tensor | str:
    if Path(value).is_file() or looks_like_path(value):
        return load_image(Path(value), option=option)  # a missing or unreadable file is a usage error naming it
    return value


@click.command("interpolate")
@click.argument("a")
@click.argument("b")
@click.option("--frames", type=click.IntRange(min=2, max=MAX_FRAMES), default=8, show_default=True,
              help=f"Frames from A to B, ends included (at most {MAX_FRAMES:,}); each is written as soon as it is made.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per forward pass.")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def interpolate(a: str, b: str, frames: int, batch_size: int, outdir: Path, **opts) -> None:
    """Render a spherical interpolation (slerp) between A and B: two prompts or image paths."""
    ends = []
    for name, value in (("A", a), ("B", b)):
        if not value.strip():
            raise click.BadParameter(f"{value!r} is empty; give a prompt or an image path", param_hint=name)
        ends.append(_picture_or_prompt(value, name))
    with opening(opts, outdir=outdir, pictures=any(not isinstance(e, str) for e in ends)) as run:
        pipeline, s, seed, device = run.pipeline, run.settings, run.seed, run.device
        names = [e if isinstance(e, str) else Path(v).stem for e, v in zip(ends, (a, b))]
        label = " to ".join(names)
        prompts = any(isinstance(e, str) for e in ends)
        runs = {name: -(-frames // batch_size) for name in pipeline.stage_names} | {"prior": int(prompts)}
        base = {**run_metadata(s, run.resolved, opts["precision"], device, prior=prompts), "seed": seed, "frames": frames,
                "a": names[0], "b": names[1]}
        i = 0
        with Progress(run.quiet, pipeline.stages(s), runs, cpu_estimate(pipeline, device, run.quiet)) as progress, sampling_errors():
            for batch in pipeline.interpolate_batches(ends, frames, s, seed=seed, batch_size=batch_size, on_step=progress):
                for img in batch.float().cpu():
                    info = {**base, "index": i, "t": i / (frames - 1), "size": [img.shape[-1], img.shape[-2]]}
                    click.echo(str(save_png(img, run.outdir, f"{slugify(label)}-{seed}-{i}", png_text(label, info))))
                    i += 1


def _parse_mix_item(value: str) -> tuple[str | torch.Tensor, float, str]:
    """'a red circle:0.7' or 'img.png:0.3' -> (prompt or image, weight, label); the weight defaults to 1."""
    head, sep, tail = value.rpartition(":")
    weight = 1.0
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            head = value  # a colon inside the prompt, no weight
    else:
        head = value
    if not head.strip() or not weight > 0 or weight != weight or weight == float("inf"):
        raise click.BadParameter(f"{value!r}: expected PROMPT[:WEIGHT] or IMAGE[:WEIGHT] with a weight > 0", param_hint="ITEMS")
    item = _picture_or_prompt(head, "ITEMS")
    return item, weight, head if isinstance(item, str) else Path(head).name


@click.command("mix")
@click.argument("items", nargs=-1, required=True)
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True, help="Number of images.")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def mix(items: tuple[str, ...], num: int, outdir: Path, **opts) -> None:
    """Images of a weighted mix of prompts and images: ITEMS are PROMPT[:WEIGHT] or IMAGE[:WEIGHT]."""
    parsed = [_parse_mix_item(item) for item in items]
    with opening(opts, outdir=outdir, images=num, pictures=any(not isinstance(item, str) for item, _, _ in parsed)) as run:
        pipeline, s, seed, device = run.pipeline, run.settings, run.seed, run.device
        prompts = any(isinstance(item, str) for item, _, _ in parsed)
        runs = {name: 1 for name in pipeline.stage_names} | {"prior": int(prompts)}
        with Progress(run.quiet, pipeline.stages(s), runs, cpu_estimate(pipeline, device, run.quiet)) as progress, sampling_errors():
            images = pipeline.mix([(item, w) for item, w, _ in parsed], s, num_images=num, seed=seed,
                                  generator=per_image_generators(seed, num, device), on_step=progress).float().cpu()
        label = " + ".join(f"{name if isinstance(item, str) else Path(name).stem}:{w:g}" for item, w, name in parsed)
        recorded = [f"{name}:{w:g}" for _, w, name in parsed]  # pictures by file name
        base = {**run_metadata(s, run.resolved, opts["precision"], device, prior=prompts), "mix": recorded, "base_seed": seed}
        for i, img in enumerate(images):
            info = {**base, "seed": seed + i, "index": i, "size": [img.shape[-1], img.shape[-2]]}
            click.echo(str(save_png(img, run.outdir, f"{slugify(label)}-{seed}-{i}", png_text(label, info))))


@click.command("upscale")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prompt", default=None, help="Conditions the super-resolution stages that read text (else their null text).")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def upscale(images: tuple[Path, ...], prompt: str | None, outdir: Path, **opts) -> None:
    """Run only the super-resolution stages of a model on IMAGES (one output per image, `{stem}-up-{seed}.png`)."""
    pictures = [load_image(path, option="IMAGES") for path in images]
    with opening(opts, outdir=outdir, images=len(pictures)) as run:
        pipeline, s, seed, device, dtype, quiet = run.pipeline, run.settings, run.seed, run.device, run.dtype, run.quiet
        size = pipeline.image_size
        for path in images:
            w, h = file_size(path)  # as the file has it (pictures are read at most MAX_SIDE wide)
            if (w > size or h > size) and not quiet:
                note(f"{path.name!r} is {w}x{h}, larger than the model's {size}x{size} output: upscale makes it smaller")
        stages = [(name, steps) for name, steps in pipeline.stages(s) if name in pipeline.stage_names[1:]]
        # only the super-resolution stages run: the image records their settings, and no prior's
        base = run_metadata(s, run.resolved, opts["precision"], device, prior=False, first_stage=1)
        with Progress(quiet, stages, {name: len(pictures) for name, _ in stages}) as progress, sampling_errors():
            for i, (path, picture) in enumerate(zip(images, pictures)):
                out = pipeline.upscale(picture.to(device=device, dtype=dtype), s, prompts=[prompt] if prompt else None,
                                       generator=per_image_generators(seed + i, 1, device), on_step=progress)[0].float().cpu()
                info = {**base, "seed": seed + i, "source": path.name, "size": [out.shape[-1], out.shape[-2]]}
                click.echo(str(save_png(out, run.outdir, f"{path.stem}-up-{seed + i}", png_text(prompt or "", info))))
