"""Importers for foreign checkpoints: LAION's DALLE2-pytorch 1.0-1.1 prior, decoder and upsampler."""

from dalle2_core.convert.laion import LaionConversion, convert_decoder, convert_laion, convert_prior
from dalle2_core.convert.safe_load import UnsafeCheckpointError, load_checkpoint

__all__ = ["LaionConversion", "UnsafeCheckpointError", "convert_decoder", "convert_laion", "convert_prior", "load_checkpoint"]
