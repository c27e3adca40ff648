"""`dream convert laion` (LAION's DALLE2-pytorch checkpoints) and `dream convert diffusers` (diffusers pipeline folders, read
by the family that declares their class) into a model folder: parses options, calls dalle2_core."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from dream_cli.errors import DreamError, one_line
from dream_cli.pictures import InputFile

FILE = InputFile()


@contextlib.contextmanager
def _new_folder(out: Path):
    """The model folder, written beside `out` and renamed onto it at the end (`dalle2_core.atomic.building_folder`):
    an interrupted conversion leaves no half folder, and the next one removes what a killed one left beside it.
    Library refusals are one line, exit 1."""
    from dalle2_core.atomic import building_folder

    out = out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DreamError(f"output folder {str(out)!r} is not empty; give a new or empty folder")
    try:
        with building_folder(out) as tmp:
            yield tmp
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        raise DreamError(one_line(err)) from None


def _report(out: Path, notes, quiet: bool) -> None:
    if not quiet:
        for note in notes:
            click.echo(f"Note: {note}", err=True)
    click.echo(str(out))


@click.group()
def convert() -> None:
    """Import weights trained elsewhere."""


@convert.command()
@click.option("--prior", type=FILE, required=True, help="Prior weights (laion/DALLE2-PyTorch prior/latest.pth).")
@click.option("--prior-config", type=FILE, required=True, help="Its prior_config.json.")
@click.option("--decoder", type=FILE, required=True, help="64 px decoder (decoder/v1.0.2/latest.pth; config inside).")
@click.option("--upsampler", type=FILE, help="64->256 px upsampler weights (Veldrovive/upsamplers working/latest.pth).")
@click.option("--upsampler-config", type=FILE, help="Its decoder_config.json.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New or empty folder for the model.")
@click.option("-q", "--quiet", is_flag=True, help="No notes on stderr (the folder path is still printed).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def laion(prior: Path, prior_config: Path, decoder: Path, upsampler: Path | None, upsampler_config: Path | None,
          out: Path, quiet: bool, debug: bool) -> None:
    """Convert LAION's prior, decoder and (optionally) upsampler into a model folder for `dream --model OUT`.

    The .pth files are read without running code from them. The CLIP is OpenAI ViT-L/14 through
    open_clip, fetched into its cache the first time the model is used.
    """
    from dalle2_core.families.unclip.laion import convert_laion

    if (upsampler is None) != (upsampler_config is None):
        raise click.UsageError("--upsampler and --upsampler-config go together")
    files = dict(prior=prior, prior_config=prior_config, decoder=decoder, upsampler=upsampler, upsampler_config=upsampler_config)
    with _new_folder(out) as tmp:
        notes = convert_laion(files, tmp).notes  # UnsafeCheckpointError is a ValueError
    _report(out, notes, quiet)


@convert.command()
@click.argument("src", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New or empty folder for the model.")
@click.option("--image-variations", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Karlo: an UnCLIPImageVariationPipeline folder or a transformers CLIP folder (openai/clip-vit-large-patch14): "
                   "its CLIP vision tower lets the model embed pictures.")
@click.option("--inpaint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Kandinsky 2.2: a KandinskyV22InpaintPipeline folder (kandinsky-2-2-decoder-inpaint), the U-Net --mask uses.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Store the weights in this precision. [as given]")
@click.option("-q", "--quiet", is_flag=True, help="No notes on stderr (the folder path is still printed).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def diffusers(src: tuple[Path, ...], out: Path, image_variations: Path | None, inpaint: Path | None, precision: str | None,
              quiet: bool, debug: bool) -> None:
    """Convert diffusers pipeline folders SRC... of one model into a model folder: an UnCLIPPipeline folder (Karlo
    v1-alpha, a fine-tune), or a Kandinsky 2.2 prior folder and its decoder folder (KandinskyV22PriorPipeline,
    KandinskyV22Pipeline).

    Only safetensors weights are read; a component with only .bin pickles is refused.
    """
    import torch

    from dalle2_core.convert.diffusers_folder import pipeline_class
    from dalle2_core.families import families, folders_converter

    first = pipeline_class(src[0])
    converter = folders_converter(first)
    if converter is None:
        known = sorted(name for fam in families() for name in fam.converters)
        what = f"a {first} folder" if first else "not a diffusers pipeline folder (no model_index.json)"
        raise click.BadParameter(f"{str(src[0])!r} is {what}; accepted: {', '.join(known)}", param_hint="SRC")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with _new_folder(out) as tmp:
        notes = converter(list(src), tmp, dtype=dtype, inpaint=inpaint, image_variations=image_variations).notes
    _report(out, notes, quiet)
