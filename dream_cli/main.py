"""Entry point: `dream PROMPT` generates; `dream train|data|eval|convert` are subcommands."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="dream-dalle2", prog_name="dream")
def cli() -> None:
    """dream: text to image with DALL-E 2 (unCLIP)."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="dream")
