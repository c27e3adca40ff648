"""The `dream` command line."""

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning, which on a busy CPU
# turned every small op of a sampling step into a wait for a descheduled thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> None:
    """The console entry point; Ctrl-C while the command modules load is one line too, exit 130."""
    try:
        from dream_cli.main import main as run
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    run(argv)


__all__ = ["main"]
