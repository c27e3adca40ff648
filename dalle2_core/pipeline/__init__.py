"""Text-to-image pipelines: one object per loaded model, the seam where model families plug in.

The families' own pipelines live in their folders (`dalle2_core.families.<name>.pipeline`); `load_pipeline` finds
the one a model folder needs.
"""

from dalle2_core.pipeline.base import (
    PRIOR_STAGE,
    ImageEdit,
    NonFiniteOutputError,
    Pipeline,
    SettingError,
    StageDefaults,
    TextCondition,
)
from dalle2_core.pipeline.loading import load_pipeline

__all__ = [
    "PRIOR_STAGE",
    "ImageEdit",
    "NonFiniteOutputError",
    "Pipeline",
    "SettingError",
    "StageDefaults",
    "TextCondition",
    "load_pipeline",
]
