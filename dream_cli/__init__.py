"""The `dream` command line."""

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning, which on a busy CPU
# turned every small op of a sampling step into a wait for a descheduled thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dream_cli.main import main  # noqa: E402

__all__ = ["main"]
