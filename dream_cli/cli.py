"""Entry point: `dream PROMPT` generates; `dream train|data|eval|convert|interpolate` are subcommands."""

from __future__ import annotations

import click

from dream_cli.commands import interpolate, mix, upscale
from dream_cli.convert import convert
from dream_cli.data import data
from dream_cli.errors import run
from dream_cli.eval import eval_group
from dream_cli.generate import generate
from dream_cli.info import info
from dream_cli.serve import serve
from dream_cli.train import train

DEFAULT_COMMAND = "generate"


# options every command takes (or, for --device and --precision, every command they apply to): they may also come
# before the command's name, `dream --debug info x.png` as `dream info x.png --debug`
GLOBAL_FLAGS = ("--debug", "-q", "--quiet")
GLOBAL_VALUED = ("--device", "--precision")


class DefaultCommandGroup(click.Group):
    """A click group whose first argument, unless it names a subcommand, goes to a default command.

    `dream "a red cube"` runs `generate`; a prompt that equals a subcommand name follows `--`
    (`dream -- train`). Options that apply everywhere (`GLOBAL_FLAGS`, `GLOBAL_VALUED`) may come before a
    subcommand's name and are handed to it.
    """

    def __init__(self, *args, default_command: str = DEFAULT_COMMAND, **kwargs):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in (*self.get_help_option_names(ctx), "--version"):
            args = self._route(ctx, args)
        return super().parse_args(ctx, args)

    def _route(self, ctx: click.Context, args: list[str]) -> list[str]:
        """`args` with the command named first: a subcommand (after the global options that led), else the default."""
        lead, i = [], 0
        while i < len(args):
            word = args[i]
            if word in GLOBAL_FLAGS or word.partition("=")[0] in GLOBAL_VALUED and "=" in word:
                lead, i = lead + [word], i + 1
            elif word in GLOBAL_VALUED and i + 1 < len(args):
                lead, i = lead + args[i:i + 2], i + 2
            else:
                break
        rest = args[i:]
        if rest and rest[0] in self.commands:
            path, command = [rest[0]], self.commands[rest[0]]
            while isinstance(command, click.Group) and len(path) < len(rest) and rest[len(path)] in command.commands:
                command = command.commands[rest[len(path)]]
                path.append(rest[len(path)])
            return [*path, *lead, *rest[len(path):]]
        word = self._first_prompt_word(ctx, args)
        if word in self.commands:
            raise click.UsageError(f"{word!r} is a command, and options for generating came before it; a prompt that equals a "
                                   f"command name goes after '--' (dream -- {word})", ctx=ctx)
        return [self.default_command, *args]

    def _first_prompt_word(self, ctx: click.Context, args: list[str]) -> str | None:
        """The first argument the default command would read as its prompt (None after `--`)."""
        command = self.commands[self.default_command]
        takes_value = {name for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.is_flag and not p.count
                       for name in p.opts}
        skip = False
        for word in args:
            if skip:
                skip = False
            elif word == "--":
                return None
            elif word.startswith("-") and len(word) > 1:
                skip = word in takes_value
            else:
                return word
        return None

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] PROMPT...")
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="       ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # the default command's options are the ones most people need: list them with the group's
        default = self.commands.get(self.default_command)
        params = [p for p in default.get_params(ctx) if p not in (default.get_help_option(ctx),)] if default is not None else []
        options = [p for p in params + self.get_params(ctx) if isinstance(p, click.Option)]
        records = [r for p in options if (r := p.get_help_record(ctx)) is not None]
        if records:
            with formatter.section("Options"):
                formatter.write_dl(records)
        self.format_commands(ctx, formatter)

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:  # a caller that handles exceptions itself
            return super().main(args, prog_name, standalone_mode=False, **extra)
        return run(self, args, prog_name, **extra)


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dream-dalle2", prog_name="dream")
def cli() -> None:
    """dream: text to image with DALL-E 2 (unCLIP).

    \b
    dream "a red cube left of a blue ball"          generate (see options below)
    dream interpolate "a red cube" "a blue ball"    render a slerp between two prompts or images
    dream mix "a red cube:0.7" photo.png:0.3        a weighted mix of prompts and images
    dream upscale small.png                         only the super-resolution stages
    dream info image.png                            the settings an image was made with (--from regenerates it)
    dream serve --model shapes                      A1111's and OpenAI's HTTP APIs and a web page on one loaded model
    dream -- train                                  a prompt that equals a command name
    """


cli.add_command(generate)
cli.add_command(interpolate)
cli.add_command(mix)
cli.add_command(upscale)
cli.add_command(info)
cli.add_command(serve)
cli.add_command(data)
cli.add_command(train)
cli.add_command(convert)
cli.add_command(eval_group)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="dream")
