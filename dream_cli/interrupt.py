"""Ctrl-C for `dream`: one line, exit 130, at every moment of a run (imports and model loading included).

SIGINT raises `Interrupted` (a BaseException that is not a KeyboardInterrupt, so no library reports it as its
own error) and sets a flag. Import machinery and finalisers can swallow or mangle an exception raised inside
them; the flag still makes the run end as interrupted. Temporary files are removed by the `finally` blocks
the exception unwinds through (`dalle2_core.atomic`).
"""

from __future__ import annotations

import signal
import sys

EXIT_CODE = 130  # 128 + SIGINT, as shells report it


class Interrupted(BaseException):
    """Ctrl-C (SIGINT)."""


_state = {"interrupted": False}


def _handler(signum, frame) -> None:
    _state["interrupted"] = True
    raise Interrupted()


def install() -> None:
    """From now on SIGINT raises `Interrupted` (main thread only, as Python's own handler). Installing it again
    keeps what already happened: an interrupt swallowed while the command modules loaded still counts."""
    signal.signal(signal.SIGINT, _handler)


def happened() -> bool:
    return _state["interrupted"]


def exit_interrupted() -> None:
    sys.stderr.write("Interrupted.\n")
    sys.exit(EXIT_CODE)
