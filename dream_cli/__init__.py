"""The `dream` command line."""

from dream_cli.main import main

__all__ = ["main"]
