"""Text-to-image pipelines: one object per loaded model, the seam where model families plug in."""

from dalle2_core.pipeline.base import (
    PRIOR_STAGE,
    ImageEdit,
    NonFiniteOutputError,
    Pipeline,
    SettingError,
    StageDefaults,
    TextCondition,
)
from dalle2_core.pipeline.karlo import KarloPipeline
from dalle2_core.pipeline.loading import PIPELINES, load_pipeline
from dalle2_core.pipeline.unclip import UnclipPipeline

__all__ = [
    "PIPELINES",
    "PRIOR_STAGE",
    "ImageEdit",
    "KarloPipeline",
    "NonFiniteOutputError",
    "Pipeline",
    "SettingError",
    "StageDefaults",
    "TextCondition",
    "UnclipPipeline",
    "load_pipeline",
]
