"""Training: trainers with per-network AdamW + EMA, and the training loop behind `dream train`."""

from dalle2_core.train.ema import EMA
from dalle2_core.train.trainers import CLIPTrainer, DecoderTrainer, DiffusionPriorTrainer

__all__ = ["EMA", "CLIPTrainer", "DecoderTrainer", "DiffusionPriorTrainer"]
