"""`dream data shapes`: write the shapes world as a training folder (parses options, calls dalle2_core)."""

from __future__ import annotations

from pathlib import Path

import click

from dalle2_core.choices import SHAPES_FORMATS as FORMATS, SHAPES_SPLITS as SPLITS
from dream_cli.errors import DreamError

MAX_IMAGES = 10_000_000  # ~1 KB of PNG each: 10 GB of small files is past any use of this world


@click.group()
def data() -> None:
    """Make training data."""


@data.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New or empty folder to write into.")
@click.option("--num", "num", type=click.IntRange(min=1, max=MAX_IMAGES), required=True,
              help=f"Number of images (at most {MAX_IMAGES:,}).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed writes the same files.")
@click.option("--split", type=click.Choice(SPLITS), default="seen", show_default=True,
              help="seen: trainable compositions; held: the held-out colour/shape pairs.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="txt", show_default=True,
              help="txt: a sidecar caption per image; jsonl: one metadata.jsonl (file_name, text).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def shapes(out: Path, num: int, seed: int, split: str, fmt: str, quiet: bool, debug: bool) -> None:
    """Render the shapes world (64x64 PNGs with captions) into OUT."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dalle2_core.shapes import write_shapes_folder
    from dalle2_core.shapes.export import check_output_folder

    try:
        check_output_folder(out)  # before the bar starts, so a refusal is one clean line
    except (FileExistsError, NotADirectoryError) as err:
        raise DreamError(str(err)) from None
    console = Console(stderr=True)
    with Progress(TextColumn("shapes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet) as progress:
        task = progress.add_task("shapes", total=num)
        write_shapes_folder(out, num, split=split, seed=seed, format=fmt,
                            on_progress=lambda _: progress.advance(task))
    if not quiet:
        console.print(f"wrote {num} {split} images with {fmt} captions to {out}")
