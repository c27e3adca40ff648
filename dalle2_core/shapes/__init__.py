"""The shapes world: a fully specified text-to-image domain, its generator and adherence evaluator."""

from dalle2_core.shapes.evaluate import ATTRIBUTES, AdherenceReport, SplitScore, read_attributes, score
from dalle2_core.shapes.export import write_shapes_folder
from dalle2_core.shapes.world import (
    COLORS,
    HELD_OUT_PAIRS,
    PALETTE,
    PHRASINGS,
    POSITIONS,
    SHAPES,
    SIZES,
    Composition,
    Sample,
    all_compositions,
    compositions,
    eval_prompts,
    generate,
    parse_caption,
    render,
    sample_compositions,
)

__all__ = [
    "ATTRIBUTES",
    "AdherenceReport",
    "COLORS",
    "Composition",
    "HELD_OUT_PAIRS",
    "PALETTE",
    "PHRASINGS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Sample",
    "SplitScore",
    "all_compositions",
    "compositions",
    "eval_prompts",
    "generate",
    "parse_caption",
    "read_attributes",
    "render",
    "sample_compositions",
    "score",
    "write_shapes_folder",
]
