"""The `dream` command line."""

import atexit
import gc
import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning, which on a busy CPU
# turned every small op of a sampling step into a wait for a descheduled thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> None:
    """The console entry point; Ctrl-C is one line, exit 130, also while the command modules load."""
    from dream_cli import interrupt

    # the objects alive at exit (torch's and the model's) are left out of the interpreter's last cycle collection,
    # which otherwise walks them all for nothing: 0.3 s of every run; registered first, so it runs after every other
    # exit handler
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    interrupt.install()
    try:
        from dream_cli.cli import main as run_cli
    except (interrupt.Interrupted, KeyboardInterrupt):
        interrupt.exit_interrupted()
    except Exception:  # an import that the interrupt broke (import machinery may re-raise it as another error)
        if interrupt.happened():
            interrupt.exit_interrupted()
        raise
    run_cli(argv)


__all__ = ["main"]
