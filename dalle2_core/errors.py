"""Errors that carry what a caller needs to word them: the setting at fault, the stage that failed.

Library errors never name a command-line flag; a front end (the CLI, the server) maps `SettingError.setting`
to its own option names.
"""

from __future__ import annotations

import torch

from dalle2_core.helpers import exists


class SettingError(ValueError):
    """A sampling setting this model cannot take; `setting` names the setting (a `SamplingSettings` field, or "fast")."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


class NonFiniteOutputError(RuntimeError):
    """A stage produced NaN or infinite values; `stage` names it."""

    def __init__(self, stage: str, cond_scale: float | None = None):
        hint = ""
        if exists(cond_scale) and cond_scale > 1e3:
            hint = f"; guidance scale {cond_scale:g} is the likely cause (try a value below 20)"
        super().__init__(f"the {stage} stage produced NaN or infinite values{hint}")
        self.stage = stage


def check_finite(x: torch.Tensor, stage: str, cond_scale: float | None = None) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteOutputError(stage, cond_scale)
    return x


__all__ = ["NonFiniteOutputError", "SettingError", "check_finite"]
