"""Running the CLI in-process for tests."""

from click.testing import CliRunner

from dream_cli.cli import cli


def dream(*args, env=None, input=None):
    """`dream ARGS...` in this process: click's Result (exit_code, output, exception); `input` is its standard input."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, input=input)
