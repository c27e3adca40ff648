"""The process's resident set from /proc/self/status (Linux), for the benchmarks that measure memory."""

from __future__ import annotations

from pathlib import Path


def status_bytes(key: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM, RssAnon, RssFile, ...) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def reset_peak() -> int:
    """Resets the peak resident set (VmHWM) to the current one (Linux >= 4.0); returns that resident set in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")
