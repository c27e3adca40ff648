"""`dream PROMPT` (the default command): parse options, call the pipeline, write files; and what every sampling
command writes into its images (the model by name, commit and weights hash; the settings of the stages that ran)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click
from click.core import ParameterSource

from dream_cli.edit import NothingToDo, edit_for, read_edit
from dream_cli.errors import DreamError
from dream_cli.jobs import Job, rank_share, read_prompts, stored_run
from dream_cli.output import make_grid, png_text, save_png, slugify, weights_sha256
from dream_cli.pictures import InputFile, load_image
from dream_cli.sampling import (
    NumberList,
    Progress,
    check_outdir,
    cpu_estimate,
    first_seed,
    info_line,
    load,
    per_image_generators,
    pick_device,
    pick_dtype,
    resolve_settings,
    sampling_errors,
    sampling_options,
    surface_warnings,
)


def model_name(resolved) -> str:
    """The model as written into images: a Hub repo (as asked for), a preset or bundled name; a local folder by its
    name only (its path names the user's folders)."""
    if resolved.source == "local":
        return Path(resolved.spec).expanduser().resolve().name
    return resolved.spec


def run_metadata(settings, resolved, precision: str, device, *, prior: bool = True, first_stage: int = 0) -> dict:
    """What every written image records about the run: model (name, commit, weights hash), the settings of the stages
    that ran (`prior=False`: no prior; `first_stage`: the decoder stages before it were skipped), precision, device."""
    import dalle2_core

    return {
        "model": model_name(resolved),
        "model_source": resolved.source,
        "model_revision": resolved.revision,
        **({"model_sources": list(resolved.sources)} if resolved.sources else {}),  # the Hub repos (commits) it came from
        "model_hash": weights_sha256(resolved.path / "decoder" / "model.safetensors"),
        "sampler": settings.sampler,
        "spacing": settings.spacing,
        "cond_scale": list(settings.cond_scale[first_stage:]),
        "steps": list(settings.steps[first_stage:]),
        "prior_cond_scale": settings.prior_cond_scale if prior else None,
        "prior_samples": settings.prior_samples if prior else None,
        "prior_steps": settings.prior_steps if prior else None,
        "precision": precision,
        "device": str(device),
        "dalle2_core_version": dalle2_core.__version__,
    }


def _command_line(prompt: str, resolved, s, seed: int, extra: list[str], prior: bool = True) -> str:
    """The command that regenerates one image (its own seed, alone); options appended to it still parse."""
    # a Hub repo pinned to the commit that was used; a local folder by its name (run it beside it, or give --model)
    spec = f"{resolved.spec.split('@')[0]}@{resolved.revision}" if resolved.source == "hub" else model_name(resolved)
    args = ["dream", "--model", spec, "--seed", str(seed), "-n", "1"]
    args += ["--sampler", s.sampler, "--cond-scale", ",".join(f"{v:g}" for v in s.cond_scale)]
    args += ["--steps", ",".join(map(str, s.steps))] + (["--spacing", s.spacing] if s.spacing else [])
    if prior and s.prior_steps is not None:
        args += ["--prior-steps", str(s.prior_steps), "--prior-cond-scale", f"{s.prior_cond_scale:g}"]
        args += ["--prior-samples", str(s.prior_samples)]
    args += extra
    if prompt:
        # a prompt that looks like an option needs the `--` separator; any other is a plain argument
        args += ["--", prompt] if prompt.startswith("-") else [prompt]
    return shlex.join(args)


def note(message: str) -> None:
    click.echo(f"Note: {message}", err=True)


@click.command("generate", hidden=True)
@click.argument("prompt", nargs=-1)
@click.option("-n", "--num", type=click.IntRange(min=1), default=1, show_default=True, help="Number of images (per prompt).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per forward pass; every image keeps its own seed, so it is reproducible alone.")
@click.option("--grid/--no-grid", default=False, show_default=True, help="Also write all images (of each prompt) as one grid.")
@click.option("--negative-prompt", default=None, help="What the images should not show: guidance pushes away from it.")
@click.option("--prompts", "prompts_file", type=InputFile(allow_dash=True),
              help="Prompts from a file (- for standard input): one a line, or JSON lines with per-prompt options (seed, num, "
                   "steps, ...).")
@click.option("--from", "from_image", type=InputFile(),
              help="Regenerate an image dream wrote, from the settings stored in it; other options override them.")
@click.option("--image", type=InputFile(), help="Variations of this image: its CLIP embedding replaces the prior.")
@click.option("--init-image", type=InputFile(),
              help="Start from this image: img2img with --strength, inpainting with --mask, outpainting with --outpaint.")
@click.option("--strength", type=NumberList(float, minimum=0, maximum=1, single=True), default=None,
              help="img2img: how much of the schedule is re-drawn (0 keeps the image, 1 ignores it). [default: 0.75]")
@click.option("--mask", type=InputFile(),
              help="Inpainting mask for --init-image: white (or transparent) = regenerate, black = keep.")
@click.option("--outpaint", metavar="SIDE:PX[,...]",
              help="Grow --init-image by PX of its pixels on each side (e.g. left:32,top:16; each axis to at most 4x) and fill "
                   "the new area; the grown picture is sampled at the model's size.")
@click.option("--outdir", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Where images are written.")
@sampling_options()
def generate(prompt: tuple[str, ...], prompts_file: Path | None, from_image: Path | None, outdir: Path, **opts) -> None:
    """Generate images from PROMPT (text to image with DALL-E 2)."""
    jobs = _jobs(" ".join(prompt), prompts_file, from_image, opts)
    try:
        edit_source = read_edit(opts["init_image"], opts["strength"], opts["mask"], opts["outpaint"], opts["image"])
    except NothingToDo as nothing:
        note(str(nothing))
        return
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["precision"], device)
    picture = load_image(opts["image"]) if opts["image"] is not None else None
    outdir = check_outdir(outdir)
    seeds = _job_seeds(jobs, opts)
    mine, rank, world = rank_share(jobs)
    quiet = opts["quiet"] or rank > 0
    for message in edit_source.notes if edit_source is not None and not quiet else ():
        note(message)

    with surface_warnings(everything=opts["debug"], negative_prompts=[j.options.get("negative_prompt") or opts["negative_prompt"]
                                                                        for j in jobs]):
        pipeline, resolved = load(opts["model_spec"], _rank_device(device, world), dtype, quiet, opts["offload"],
                                  pictures=picture is not None, inpainting=edit_source is not None and edit_source.mask is not None)
        if pipeline.unconditional:
            picture = None  # nothing conditions the images: no prior, no image embedding
        elif picture is None and not pipeline.has_prior:
            raise DreamError(f"model {resolved.spec!r} has no prior, so it cannot generate from text; use --image")
        for index, job in mine:
            run = Run(pipeline, resolved, job, seeds[index], {**opts, **job.options}, picture, edit_source, dtype, outdir, quiet)
            run.write()


def _jobs(text: str, prompts_file: Path | None, from_image: Path | None, opts: dict) -> list[Job]:
    """The prompts of this run; `--from` fills every option left at its default from the image's settings."""
    ctx = click.get_current_context()
    if prompts_file is not None and (text.strip() or from_image is not None):
        raise click.UsageError("--prompts takes the prompts from its file: give no PROMPT and no --from with it")
    if prompts_file is not None:
        return read_prompts(prompts_file, ctx)
    if from_image is not None:
        job, stored, local_model = stored_run(from_image, ctx)
        for name, value in stored.items():
            if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
                opts[name] = value
        if local_model is not None and ctx.get_parameter_source("model_spec") in (ParameterSource.DEFAULT, None):
            raise click.BadParameter(f"{str(from_image)!r} was made with the local model folder {local_model!r} (images record "
                                     "a local folder by its name only); give --model PATH to regenerate it", param_hint="--from")
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

    def __init__(self, pipeline, resolved, job: Job, seed: int, opts: dict, picture, edit_source, dtype, outdir: Path, quiet: bool):
        self.pipeline, self.resolved, self.text, self.seed, self.opts = pipeline, resolved, job.prompt, seed, opts
        self.picture, self.outdir, self.quiet = picture, outdir, quiet
        self.num, self.batch_size = opts["num"], opts["batch_size"]
        self.s = resolve_settings(pipeline, opts, inpainting=edit_source is not None and edit_source.mask is not None)
        self.edit = edit_for(edit_source, self.s.size, pipeline.device, dtype)
        image, negative = opts["image"], opts.get("negative_prompt")
        # variations take the picture's embedding: the prior runs only for a negative prompt
        self.prior = pipeline.has_prior and not pipeline.unconditional and (picture is None or bool(negative))
        self.base = {**run_metadata(self.s, resolved, opts["precision"], pipeline.device, prior=self.prior), "base_seed": seed,
                     "num": self.num, "batch_size": self.batch_size, "negative_prompt": negative,
                     "image": image.name if image is not None else None, **(edit_source.metadata if edit_source else {})}
        self.extra = (["--image", image.name] if image is not None else []) + (edit_source.args if edit_source else [])
        if negative:
            self.extra += ["--negative-prompt", negative]
        if tuple(self.s.size) != tuple(pipeline.default_size):
            self.extra += ["--size", "{}x{}".format(*self.s.size)]
        self.slug = slugify(self.text if self.text.strip() else image.stem)

    def write(self) -> None:
        info_line(self.quiet, self.seed, self.resolved, self.pipeline.device, self.opts["precision"])
        stages = self.pipeline.stages(self.s)
        batches = -(-self.num // self.batch_size)
        runs = {name: batches for name, _ in stages}
        if "prior" in runs:  # for the prompts and for a negative prompt (not at all for variations without one)
            prior = self.pipeline.prior_runs(text=self.picture is None, negative=bool(self.opts.get("negative_prompt")))
            runs["prior"] = batches * prior if self.prior else 0
        saved = []
        estimate = cpu_estimate(self.pipeline, self.pipeline.device, self.quiet)
        with Progress(self.quiet, stages, runs, estimate) as progress, sampling_errors():
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
                "command": _command_line(self.text, self.resolved, self.s, self.seed + i, self.extra, prior=self.prior)}
        path = save_png(img, self.outdir, f"{self.slug}-{self.seed}-{i}", png_text(self.text, info))
        click.echo(str(path))
        return path, img


def _write_grid(saved: list, outdir: Path, stem: str, text: str, info: dict, quiet: bool) -> None:
    if len(saved) < 2:
        if not quiet:
            click.echo("Note: --grid needs two or more images; one image was written, no grid", err=True)
        return
    import torch

    tiles = torch.stack([img for _, img in saved])
    grid = make_grid(tiles)
    click.echo(str(save_png(grid, outdir, stem, png_text(text, {**info, "size": [grid.shape[-1], grid.shape[-2]]}))))
