"""What a run measured: `metrics.jsonl` (one JSON object per optimizer step) and, when the
`tensorboard` package is installed, TensorBoard event files in `tensorboard/`. Process 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path


def tensorboard_writer(folder: Path):
    """A `SummaryWriter` on `folder`, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed
        return None
    return SummaryWriter(log_dir=str(folder))


class Metrics:
    """Appends a row per step: step, stage, loss, lr, grad_norm, images_per_s, seconds."""

    def __init__(self, run_root: Path, enabled: bool = True):
        self.path = run_root / "metrics.jsonl"
        self.tensorboard_dir = run_root / "tensorboard"
        self.enabled = enabled
        self._file = None
        self._writer = None

    def log(self, **row) -> None:
        if not self.enabled:
            return
        if self._file is None:  # opened at the first step: a run that never steps writes nothing
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            self._writer = tensorboard_writer(self.tensorboard_dir)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()  # a killed run keeps every finished step
        if self._writer is not None:
            for name in ("loss", "lr", "grad_norm", "images_per_s"):
                if isinstance(row.get(name), (int, float)):
                    self._writer.add_scalar(f"{row['stage']}/{name}", row[name], row["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
        self._file = self._writer = None
