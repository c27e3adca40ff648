"""How `dream` fails: one line on stderr, exit 2 for usage errors and 1 for runtime errors.

A traceback is shown only with `--debug` (or `DREAM_DEBUG=1`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback

import click

from dream_cli import interrupt


class DreamError(click.ClickException):
    """A runtime failure (model cannot be loaded, output cannot be written): exit code 1."""

    exit_code = 1


def one_line(text: object) -> str:
    """`text` with its line breaks folded, so an error is a single line (values keep their spaces)."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


# C0 and C1 control characters, DEL, and the bidirectional overrides that reorder what a terminal shows
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """Untrusted text (metadata from a file) safe to print on a terminal: control characters written as escapes
    (`\\x1b`, `\\n`), so no escape sequence reaches the terminal and every value stays on its line."""
    def escape(match: re.Match) -> str:
        c = match.group()
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROLS.sub(escape, str(text))


def wants_debug(args: list[str]) -> bool:
    """`--debug` before a `--` separator, or DREAM_DEBUG set."""
    head = args[: args.index("--")] if "--" in args else args
    return "--debug" in head or os.environ.get("DREAM_DEBUG", "") not in ("", "0")


def _say(line: str) -> None:
    """The one error line on stderr; under torchrun also in its error file, so that its failure summary reports the
    line as the worker's error (instead of a pointer to how to get a traceback)."""
    click.echo(line, err=True)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError):
            with open(path, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)


def report(err: BaseException, debug: bool, args: list[str] = ()) -> int:
    """Print `err` as one line and return the exit code (re-raises when debugging)."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError):
        err.show()
        return err.exit_code
    if isinstance(err, click.ClickException):
        if debug and isinstance(err, DreamError) and err.__context__ is not None:
            traceback.print_exception(err.__context__)  # the library error behind the one line
        message = err.format_message()
        if isinstance(err, click.NoSuchOption) and err.ctx is not None and err.ctx.command.name == "generate":
            word = next((a for a in args if a.startswith(err.option_name)), err.option_name)  # '-dash' given, '-d' parsed
            message = one_line(message) + f" (a prompt that starts with '-' goes after '--': dream -- {word!r})"
        elif isinstance(err, click.UsageError) and not isinstance(err, click.BadParameter):
            ctx = err.ctx
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = one_line(message) + hint
        _say(f"Error: {one_line(message)}")
        return err.exit_code
    if isinstance(err, click.Abort):
        click.echo("Aborted.", err=True)
        return 1
    if debug:
        raise err
    name = type(err).__name__
    _say(f"Error: {name}: {one_line(err)} (run with --debug for the traceback)")
    return 1


def run(command: click.Command, args: list[str] | None, prog_name: str | None, **extra) -> None:
    """Run a click command with `dream`'s error reporting instead of click's standalone handling."""
    args = list(sys.argv[1:] if args is None else args)
    debug = wants_debug(args)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    if in_main_thread:
        interrupt.install()
    try:
        code = click.Command.main(command, args, prog_name, standalone_mode=False, **extra)
    except (interrupt.Interrupted, KeyboardInterrupt):
        interrupt.exit_interrupted()
    except Exception as err:  # click's usage errors and Abort included
        if interrupt.happened():  # an error the interrupt caused on its way out
            interrupt.exit_interrupted()
        sys.exit(report(err, debug, args))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    if interrupt.happened():  # an interrupt that something swallowed on its way (import machinery, a finaliser)
        interrupt.exit_interrupted()
    sys.exit(code if isinstance(code, int) else 0)
