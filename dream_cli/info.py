"""`dream info IMG.png`: the settings an image was made with, as dream stored them in it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dream_cli.output import read_settings

SHOWN_FIRST = ("prompt", "negative_prompt", "seed", "model", "model_revision", "model_hash", "sampler", "steps", "cond_scale",
               "prior_steps", "prior_cond_scale", "prior_samples", "size", "precision", "device", "command")


@click.command("info")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the stored settings as one JSON object per image.")
def info(images: tuple[Path, ...], as_json: bool) -> None:
    """Print the settings stored in IMAGES (the prompt, seed, model and sampling settings, the regenerate command)."""
    for n, path in enumerate(images):
        settings = read_settings(path, option="IMAGES")
        if as_json:
            click.echo(json.dumps(settings))
            continue
        if len(images) > 1:
            click.echo(("\n" if n else "") + f"{path}:")
        keys = [k for k in SHOWN_FIRST if settings.get(k) is not None] + sorted(
            k for k in settings if k not in SHOWN_FIRST and settings[k] is not None)
        width = max(map(len, keys))
        for key in keys:
            value = settings[key]
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) else value
            click.echo(f"{key:<{width}}  {shown}")
