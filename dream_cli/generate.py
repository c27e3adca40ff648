"""`dream PROMPT` (the default command) and `dream interpolate A B`: parse options, call the pipeline, write files."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click
from click.core import ParameterSource

from dream_cli.errors import DreamError
from dream_cli.jobs import Job, rank_share, read_prompts, stored_run
from dream_cli.output import (
    fit_square,
    make_grid,
    outpaint,
    parse_outpaint,
    png_text,
    save_png,
    slugify,
    weights_sha256,
)
from dream_cli.pictures import load_image, load_mask
from dream_cli.sampling import (
    Progress,
    check_outdir,
    first_seed,
    load,
    per_image_generators,
    pick_device,
    pick_dtype,
    resolve_settings,
    sampling_errors,
    sampling_options,
    surface_warnings,
)

if TYPE_CHECKING:
    import torch


def run_metadata(settings, resolved, precision: str, device) -> dict:
    """What every written image records about the run: model, settings, precision, device."""
    import dalle2_core

    return {
        "model": resolved.spec,
        "model_source": resolved.source,
        "model_path": str(resolved.path.resolve()),
        "model_revision": resolved.revision,
        "model_hash": weights_sha256(resolved.path / "decoder" / "model.safetensors"),
        "sampler": settings.sampler,
        "cond_scale": list(settings.cond_scale),
        "steps": list(settings.steps),
        "prior_cond_scale": settings.prior_cond_scale,
        "prior_samples": settings.prior_samples,
        "prior_steps": settings.prior_steps,
        "precision": precision,
        "device": str(device),
        "dalle2_core_version": dalle2_core.__version__,
    }


def _command_line(prompt: str, resolved, s, seed: int, extra: list[str]) -> str:
    """The command that regenerates one image (its own seed, alone); options appended to it still parse."""
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
    args += extra
    if prompt:
        # a prompt that looks like an option needs the `--` separator; any other is a plain argument
        args += ["--", prompt] if prompt.startswith("-") else [prompt]
    return shlex.join(args)


def _info_line(quiet: bool, seed: int, resolved, device, precision: str) -> None:
    if not quiet:
        click.echo(f"seed {seed}  model {resolved.spec}  device {device}  {precision}", err=True)


@click.command("generate", hidden=True)
@click.argument("prompt", nargs=-1)
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True, help="Number of images (per prompt).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per forward pass; every image keeps its own seed, so it is reproducible alone.")
@click.option("--grid/--no-grid", default=False, show_default=True, help="Also write all images (of each prompt) as one grid.")
@click.option("--negative-prompt", default=None, help="What the images should not show: guidance pushes away from it.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Prompts from a file: one a line, or JSON lines with per-prompt options (seed, num, steps, ...).")
@click.option("--from", "from_image", type=click.Path(path_type=Path, dir_okay=False),
              help="Regenerate an image dream wrote, from the settings stored in it; other options override them.")
@click.option("--image", type=click.Path(path_type=Path), help="Variations of this image: its CLIP embedding replaces the prior.")
@click.option("--init-image", type=click.Path(path_type=Path),
              help="Start from this image: img2img with --strength, inpainting with --mask, outpainting with --outpaint.")
@click.option("--strength", type=click.FloatRange(0, 1), default=None,
              help="img2img: how much of the schedule is re-drawn (0 keeps the image, 1 ignores it). [default: 0.75]")
@click.option("--mask", type=click.Path(path_type=Path), help="Inpainting mask for --init-image: white = regenerate, black = keep.")
@click.option("--outpaint", metavar="SIDE:PX[,...]", help="Grow --init-image (e.g. left:32,top:16) and fill the new area.")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def generate(prompt: tuple[str, ...], prompts_file: Path | None, from_image: Path | None, outdir: Path, **opts) -> None:
    """Generate images from PROMPT (text to image with DALL-E 2)."""
    jobs = _jobs(" ".join(prompt), prompts_file, from_image, opts)
    edit_source = _read_edit(opts["init_image"], opts["strength"], opts["mask"], opts["outpaint"], opts["image"])
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["precision"], device)
    picture = load_image(opts["image"]) if opts["image"] is not None else None
    outdir = check_outdir(outdir)
    seeds = _job_seeds(jobs, opts)
    mine, rank, world = rank_share(jobs)
    quiet = opts["quiet"] or rank > 0

    with surface_warnings(everything=opts["debug"]):
        pipeline, resolved = load(opts["model_spec"], _rank_device(device, world), dtype, quiet, opts["offload"])
        if pipeline.unconditional:
            picture = None  # nothing conditions the images: no prior, no image embedding
        elif picture is None and not pipeline.has_prior:
            raise DreamError(f"model {resolved.spec!r} has no prior, so it cannot generate from text; use --image")
        edit = _edit_for(pipeline, edit_source, pipeline.device)
        for index, job in mine:
            run = Run(pipeline, resolved, job, seeds[index], {**opts, **job.options}, picture, edit_source, edit, outdir, quiet)
            run.write()


def _jobs(text: str, prompts_file: Path | None, from_image: Path | None, opts: dict) -> list[Job]:
    """The prompts of this run; `--from` fills every option left at its default from the image's settings."""
    if prompts_file is not None and (text.strip() or from_image is not None):
        raise click.UsageError("--prompts takes the prompts from its file: give no PROMPT and no --from with it")
    if prompts_file is not None:
        return read_prompts(prompts_file)
    if from_image is not None:
        job, stored = stored_run(from_image)
        ctx = click.get_current_context()
        for name, value in stored.items():
            if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
                opts[name] = value
        text = text if text.strip() else job.prompt
    if not text.strip() and opts["image"] is None:
        raise click.BadParameter(f"{text!r} is empty; give a non-blank prompt (or --image for variations)", param_hint="PROMPT")
    return [Job(text)]


def _job_seeds(jobs: list[Job], opts: dict) -> list[int]:
    """Each job's first seed: its own, else the run's seed plus the images before it (the same in every process)."""
    if opts["seed"] is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError("under torchrun give --seed, so that every process numbers the images as one process would")
    total = sum(job.options.get("num", opts["num"]) for job in jobs)
    base, seeds = first_seed(opts["seed"], total), []
    for job in jobs:
        seeds.append(first_seed(job.options["seed"], job.options.get("num", opts["num"])) if "seed" in job.options else base)
        base += job.options.get("num", opts["num"])
    return seeds


def _rank_device(device, world: int):
    """Under torchrun, process LOCAL_RANK samples on accelerator LOCAL_RANK."""
    import torch

    if world > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


class Run:
    """The images of one prompt: batches through the pipeline, each image written as soon as it exists."""

    def __init__(self, pipeline, resolved, job: Job, seed: int, opts: dict, picture, edit_source, edit, outdir: Path, quiet: bool):
        self.pipeline, self.resolved, self.text, self.seed, self.opts = pipeline, resolved, job.prompt, seed, opts
        self.picture, self.edit, self.outdir, self.quiet = picture, edit, outdir, quiet
        self.num, self.batch_size = opts["num"], opts["batch_size"]
        self.s = resolve_settings(pipeline, opts, inpainting=edit is not None and edit.mask is not None)
        image = opts["image"]
        self.base = {**run_metadata(self.s, resolved, opts["precision"], pipeline.device), "base_seed": seed, "num": self.num,
                     "batch_size": self.batch_size, "negative_prompt": opts.get("negative_prompt"),
                     "image": str(image.resolve()) if image is not None else None, **(edit_source.metadata if edit_source else {})}
        self.extra = (["--image", str(image.resolve())] if image is not None else []) + (edit_source.args if edit_source else [])
        if opts.get("negative_prompt"):
            self.extra += ["--negative-prompt", opts["negative_prompt"]]
        self.slug = slugify(self.text if self.text.strip() else image.stem)

    def write(self) -> None:
        _info_line(self.quiet, self.seed, self.resolved, self.pipeline.device, self.opts["precision"])
        stages = self.pipeline.stages(self.s)
        runs = {name: -(-self.num // self.batch_size) for name, _ in stages}
        if self.picture is not None:
            runs.pop("prior", None)
        saved = []
        with Progress(self.quiet, stages, runs) as progress, sampling_errors():
            for start in range(0, self.num, self.batch_size):
                b = min(self.batch_size, self.num - start)
                for j, img in enumerate(self._batch(start, b, progress)):
                    saved.append(self._save(start + j, img))
        if self.opts["grid"]:
            info = {**self.base, "seed": self.seed, "grid": True}
            _write_grid(saved, self.outdir, f"{self.slug}-{self.seed}-grid", self.text, info, self.quiet)

    def _batch(self, start: int, b: int, progress):
        generator = per_image_generators(self.seed + start, b, self.pipeline.device)  # image i: seed + i, whatever the batching
        negative = self.opts.get("negative_prompt")
        negatives = [negative] * b if negative else None
        if self.picture is None:
            images = self.pipeline.generate([self.text] * b, self.s, generator=generator, on_step=progress, edit=self.edit,
                                            negative_prompts=negatives)
        else:
            images = self.pipeline.variations(self.picture.to(self.pipeline.device), self.s, num_variations=b,
                                              prompts=self.text if self.text.strip() else None, generator=generator,
                                              on_step=progress, negative_prompts=negatives)
        return images.float().cpu()

    def _save(self, i: int, img):
        info = {**self.base, "seed": self.seed + i, "index": i, "size": [img.shape[-1], img.shape[-2]],
                "command": _command_line(self.text, self.resolved, self.s, self.seed + i, self.extra)}
        path = save_png(img, self.outdir, f"{self.slug}-{self.seed}-{i}", png_text(self.text, info))
        click.echo(str(path))
        return path, img


class EditSource(NamedTuple):
    """An --init-image read from disk (and its mask), what the metadata records and the regenerate command repeats."""

    image: torch.Tensor  # (1, 3, h, w) in [0, 1]
    mask: torch.Tensor | None  # (1, h, w) bool, True = regenerate
    strength: float
    metadata: dict
    args: list[str]


def _read_edit(init_image, strength, mask, outpaint_spec, image) -> EditSource | None:
    """--init-image with --strength, --mask or --outpaint, checked and read before any model is loaded."""
    if init_image is None:
        if strength is not None or mask is not None or outpaint_spec is not None:
            raise click.UsageError("--strength, --mask and --outpaint need --init-image")
        return None
    if image is not None:
        raise click.UsageError("--image (variations) and --init-image (editing) cannot be combined")
    if strength is not None and (mask is not None or outpaint_spec is not None):
        raise click.UsageError("--strength is for img2img; inpainting and outpainting (--mask, --outpaint) re-draw the masked area fully")
    picture = load_image(init_image, option="--init-image")
    region, note = load_mask(mask, picture) if mask is not None else (None, None)
    if outpaint_spec is not None:
        picture, region = outpaint(picture, region, parse_outpaint(outpaint_spec))
    strength = 0.75 if strength is None and region is None else 1.0 if strength is None else strength
    metadata = {"init_image": str(init_image.resolve()), "strength": strength,
                "mask": str(mask.resolve()) if mask is not None else None, "outpaint": outpaint_spec}
    args = ["--init-image", str(init_image.resolve())]
    args += ["--mask", str(mask.resolve())] if mask is not None else []
    args += ["--outpaint", outpaint_spec] if outpaint_spec is not None else []
    args += ["--strength", f"{strength:g}"] if region is None else []
    return EditSource(picture, region, strength, metadata, args)


def _edit_for(pipeline, source: EditSource | None, device):
    """The edit at the model's output size, on its device."""
    from dalle2_core.pipeline import ImageEdit

    if source is None:
        return None
    image, mask = fit_square(source.image, source.mask, pipeline.image_size)
    return ImageEdit(image.to(device), source.strength, mask.to(device) if mask is not None else None)


def _write_grid(saved: list, outdir: Path, stem: str, text: str, info: dict, quiet: bool) -> None:
    if len(saved) < 2:
        if not quiet:
            click.echo("Note: --grid needs two or more images; one image was written, no grid", err=True)
        return
    import torch

    tiles = torch.stack([img for _, img in saved])
    grid = make_grid(tiles)
    click.echo(str(save_png(grid, outdir, stem, png_text(text, {**info, "size": [grid.shape[-1], grid.shape[-2]]}))))


@click.command("interpolate")
@click.argument("a")
@click.argument("b")
@click.option("--frames", type=click.IntRange(min=2), default=8, show_default=True, help="Frames from A to B, ends included.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per forward pass.")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def interpolate(a: str, b: str, frames: int, batch_size: int, outdir: Path, **opts) -> None:
    """Render a spherical interpolation (slerp) between A and B: two prompts or image paths."""
    ends = []
    for name, value in (("A", a), ("B", b)):
        if not value.strip():
            raise click.BadParameter(f"{value!r} is empty; give a prompt or an image path", param_hint=name)
        ends.append(load_image(Path(value), option=name) if Path(value).is_file() else value)
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["precision"], device)
    outdir = check_outdir(outdir)
    seed = first_seed(opts["seed"], 1)
    quiet = opts["quiet"]

    with surface_warnings(everything=opts["debug"]):
        pipeline, resolved = load(opts["model_spec"], device, dtype, quiet, opts["offload"])
        s = resolve_settings(pipeline, opts)
        _info_line(quiet, seed, resolved, device, opts["precision"])
        label = " to ".join(e if isinstance(e, str) else Path(v).stem for e, v in zip(ends, (a, b)))
        runs = {name: -(-frames // batch_size) for name in pipeline.stage_names}
        if any(isinstance(e, str) for e in ends):
            runs["prior"] = 1
        with Progress(quiet, pipeline.stages(s), runs) as progress, sampling_errors():
            images = pipeline.interpolate(ends, frames, s, seed=seed, batch_size=batch_size, on_step=progress).float().cpu()
        base = run_metadata(s, resolved, opts["precision"], device)
        for i, img in enumerate(images):
            info = {**base, "seed": seed, "index": i, "frames": frames, "t": i / (frames - 1), "a": a, "b": b,
                    "size": [img.shape[-1], img.shape[-2]]}
            click.echo(str(save_png(img, outdir, f"{slugify(label)}-{seed}-{i}", png_text(label, info))))


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
    path = Path(head)
    if path.is_file():
        return load_image(path, option="ITEMS"), weight, path.stem
    return head, weight, head


@click.command("mix")
@click.argument("items", nargs=-1, required=True)
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True, help="Number of images.")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def mix(items: tuple[str, ...], num: int, outdir: Path, **opts) -> None:
    """Images of a weighted mix of prompts and images: ITEMS are PROMPT[:WEIGHT] or IMAGE[:WEIGHT]."""
    parsed = [_parse_mix_item(item) for item in items]
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["precision"], device)
    outdir = check_outdir(outdir)
    seed = first_seed(opts["seed"], num)
    quiet = opts["quiet"]
    with surface_warnings(everything=opts["debug"]):
        pipeline, resolved = load(opts["model_spec"], device, dtype, quiet, opts["offload"])
        s = resolve_settings(pipeline, opts)
        _info_line(quiet, seed, resolved, device, opts["precision"])
        runs = {name: 1 for name in pipeline.stage_names}
        if any(isinstance(item, str) for item, _, _ in parsed):
            runs["prior"] = 1
        with Progress(quiet, pipeline.stages(s), runs) as progress, sampling_errors():
            images = pipeline.mix([(item, w) for item, w, _ in parsed], s, num_images=num, seed=seed,
                                  generator=per_image_generators(seed, num, device), on_step=progress).float().cpu()
        label = " + ".join(f"{name}:{w:g}" for _, w, name in parsed)
        base = {**run_metadata(s, resolved, opts["precision"], device), "mix": list(items), "base_seed": seed}
        for i, img in enumerate(images):
            info = {**base, "seed": seed + i, "index": i, "size": [img.shape[-1], img.shape[-2]]}
            click.echo(str(save_png(img, outdir, f"{slugify(label)}-{seed}-{i}", png_text(label, info))))


@click.command("upscale")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prompt", default=None, help="Conditions the super-resolution stages that read text (else their null text).")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def upscale(images: tuple[Path, ...], prompt: str | None, outdir: Path, **opts) -> None:
    """Run only the super-resolution stages of a model on IMAGES (one output per image, `{stem}-up-{seed}.png`)."""
    pictures = [load_image(path, option="IMAGES") for path in images]
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["precision"], device)
    outdir = check_outdir(outdir)
    seed = first_seed(opts["seed"], len(pictures))
    quiet = opts["quiet"]
    with surface_warnings(everything=opts["debug"]):
        pipeline, resolved = load(opts["model_spec"], device, dtype, quiet, opts["offload"])
        s = resolve_settings(pipeline, opts)
        _info_line(quiet, seed, resolved, device, opts["precision"])
        stages = pipeline.stages(s)
        with Progress(quiet, stages, {name: len(pictures) for name in pipeline.stage_names[1:]}) as progress, sampling_errors():
            base = run_metadata(s, resolved, opts["precision"], device)
            for i, (path, picture) in enumerate(zip(images, pictures)):
                out = pipeline.upscale(picture.to(device), s, prompts=[prompt] if prompt else None,
                                       generator=per_image_generators(seed + i, 1, device), on_step=progress)[0].float().cpu()
                info = {**base, "seed": seed + i, "source": str(path.resolve()), "size": [out.shape[-1], out.shape[-2]]}
                click.echo(str(save_png(out, outdir, f"{path.stem}-up-{seed + i}", png_text(prompt or "", info))))
