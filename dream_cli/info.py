"""`dream info IMG.png`: the settings an image was made with, as dream stored them in it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dream_cli.errors import printable
from dream_cli.output import read_settings
from dream_cli.pictures import InputFile

SHOWN_FIRST = ("prompt", "negative_prompt", "seed", "model", "model_revision", "model_hash", "sampler", "steps", "cond_scale",
               "prior_steps", "prior_cond_scale", "prior_samples", "size", "precision", "device", "command")


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


@click.command("info")
@click.argument("images", nargs=-1, required=True, type=InputFile())
@click.option("--json", "as_json", is_flag=True, help="Print the stored settings as one JSON object per image.")
@click.option("-q", "--quiet", is_flag=True, hidden=True, help="Accepted everywhere; info prints only what it was asked for.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def info(images: tuple[Path, ...], as_json: bool, quiet: bool, debug: bool) -> None:
    """Print the settings stored in IMAGES (the prompt, seed, model and sampling settings, the regenerate command).

    The text comes from the file, so its control characters are printed as escapes (\\x1b, \\n).
    """
    for n, path in enumerate(images):
        settings = read_settings(path, option="IMAGES")
        if as_json:
            click.echo(json.dumps(settings))  # ASCII with every control character escaped
            continue
        if len(images) > 1:
            click.echo(("\n" if n else "") + f"{printable(path)}:")
        keys = [k for k in SHOWN_FIRST if settings.get(k) is not None] + sorted(
            k for k in settings if k not in SHOWN_FIRST and settings[k] is not None)
        width = max(map(len, map(printable, keys)), default=0)
        for key in keys:
            click.echo(f"{printable(key):<{width}}  {printable(_shown(settings[key]))}")
