"""The run folder: a model folder (`dalle2_core.checkpoint`) plus `training/` and the run's records.

    model_index.json, clip/, prior/, decoder/   the model, as `dream --model RUN` loads it
    training/settings.json                       the architecture the run was started with, and the
                                                 settings each stage was last trained with
    training/<stage>.pt                          resumable state per stage (atomically replaced)
    metrics.jsonl, tensorboard/, samples/        what the run measured and drew

Only process 0 writes. Nothing is written before the first step; a new run that fails before its
first checkpoint is removed again, so its folder is left as it was found. A checkpoint writes
settings.json, then the state (which holds the weights), then the model folder: a process killed at
any point resumes from the last complete state.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from dalle2_core import checkpoint, component
from dalle2_core.atomic import atomic_path, remove_temporaries
from dalle2_core.train.settings import TrainingError

SETTINGS_FILE = "settings.json"
# what this folder's writers name their targets: their temporaries are ours to remove
_OWN_TOP = {checkpoint.INDEX_FILE, *checkpoint.COMPONENTS, "training", "samples", "metrics.jsonl", "tensorboard"}


class RunDir:
    """Paths and small JSON records of a training run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.training = self.root / "training"
        self.samples = self.root / "samples"
        self.metrics = self.root / "metrics.jsonl"
        self.saved = False  # a whole checkpoint has been written by this process

    def check(self, resume: bool) -> bool:
        """Whether there is a run to go on with; refuses a folder that cannot take this run.

        A run killed before its first checkpoint left only its log (`metrics.jsonl`): resuming it
        starts it again."""
        if self.root.exists() and not self.root.is_dir():
            raise TrainingError(f"{self.root} is a file; the run's output must be a folder", setting="out", usage=True)
        if not resume and self.root.is_dir() and any(self.root.iterdir()):
            raise TrainingError(f"{self.root} is not empty", setting="out", code="out_not_empty")
        if resume and not (self.training / SETTINGS_FILE).is_file():
            if self.metrics.is_file():
                return False
            raise TrainingError(f"{self.root} holds no training run to resume (no {self.training.name}/{SETTINGS_FILE})",
                                setting="out", code="no_run")
        return resume

    def stored(self) -> dict | None:
        path = self.training / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TrainingError(f"{path} cannot be read ({err}); it records how the run was started") from None

    def record(self, architecture: dict, stage: str, used: dict) -> None:
        """settings.json: the architecture, and the settings `stage` was trained with (written with its checkpoint)."""
        stored = self.stored() or {}
        stages = {**stored.get("stages", {}), stage: used}
        self._write_json(self.training / SETTINGS_FILE, {**architecture, "stages": stages})

    def _write_json(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")

    def state_path(self, stage: str) -> Path:
        return self.training / f"{stage}.pt"

    def save_state(self, stage: str, state: dict) -> None:
        self.training.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.state_path(stage)) as tmp:
            torch.save(state, tmp)

    def load_state(self, stage: str) -> dict | None:
        path = self.state_path(stage)
        if not path.is_file():
            return None
        # plain tensors and containers only: never unpickle code
        return torch.load(path, map_location="cpu", weights_only=True)

    def component(self, name: str) -> Path | None:
        """The component folder `name` when the run has one (a resumed run)."""
        path = self.root / name
        return path if (path / component.CONFIG_FILE).is_file() else None

    def remove_temporaries(self) -> list[Path]:
        """Temporary files and folders that a killed save left in the run (ours only, by name)."""
        removed = remove_temporaries(self.root, _OWN_TOP)
        for folder in (self.training, self.samples):
            removed += remove_temporaries(folder)
        return removed

    @contextlib.contextmanager
    def removed_on_failure(self, new: bool) -> Iterator[None]:
        """A new run that fails before its first checkpoint leaves the folder as it was (absent or empty)."""
        existed = self.root.exists()
        try:
            yield
        except BaseException:
            if new and not self.saved:
                self._remove_contents(remove_root=not existed)
            raise

    def _remove_contents(self, remove_root: bool) -> None:
        if remove_root:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for path in self.root.iterdir() if self.root.is_dir() else ():  # the folder was empty before
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
