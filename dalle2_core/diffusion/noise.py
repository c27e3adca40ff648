"""Noise sources: objects that stand in for a `torch.Generator` wherever the library draws noise.

`helpers.randn` accepts any object with a `randn(shape, device, dtype)` method in place of a
generator. `RecordedNoise` replays tensors drawn elsewhere (another implementation's latents and step
noises) in order, so two samplers can be compared on exactly the same randomness.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RecordedNoise:
    """Returns the given tensors one per draw, in order; a draw of another shape, or past the end, is an error."""

    def __init__(self, tensors: Iterable[torch.Tensor]):
        self.tensors = [t.detach() for t in tensors]
        self.position = 0

    def randn(self, shape, device=None, dtype=None) -> torch.Tensor:
        if self.position >= len(self.tensors):
            raise ValueError(
                f"recorded noise exhausted: draw {self.position + 1} asked for {tuple(shape)}, only {len(self.tensors)} recorded"
            )
        tensor = self.tensors[self.position]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"recorded draw {self.position + 1} has shape {tuple(tensor.shape)}; the sampler asked for {tuple(shape)}")
        self.position += 1
        return tensor.to(device=device, dtype=dtype)

    @property
    def remaining(self) -> int:
        return len(self.tensors) - self.position


__all__ = ["RecordedNoise"]
