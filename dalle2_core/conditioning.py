"""What a text encoder gives for a batch of prompts: one type from the CLIP adapters to every prior and cascade.

A `TextCondition` is computed once per batch and shared: the prior reads the embedding (and the token states),
a text-conditioned decoder the token states, and guidance's unconditional branch takes another one (the empty
prompt's, a negative prompt's) of the same type. It imports only torch, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class TextCondition(NamedTuple):
    """A batch of encoded prompts; `text_encodings` / `text_mask` are None for a tower that gives only embeddings."""

    text_embed: torch.Tensor  # (b, d)
    text_encodings: torch.Tensor | None = None  # (b, n, d_text)
    text_mask: torch.Tensor | None = None  # (b, n) bool, True = a real token
    text: list[str] | torch.Tensor | None = None  # the prompts (or token ids) they came from

    @property
    def batch(self) -> int:
        return self.text_embed.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The network keywords `text_embed`, `text_encodings`, `text_mask` (those that exist)."""
        pairs = (("text_embed", self.text_embed), ("text_encodings", self.text_encodings), ("text_mask", self.text_mask))
        return {k: v for k, v in pairs if v is not None}

    def with_mask(self) -> TextCondition:
        """The same condition with an all-True mask where none was given (every token real)."""
        if self.text_mask is not None or self.text_encodings is None:
            return self
        mask = torch.ones(self.text_encodings.shape[:2], dtype=torch.bool, device=self.text_encodings.device)
        return self._replace(text_mask=mask)

    def rows(self, start: int, stop: int) -> TextCondition:
        return self._map(lambda t: t[start:stop], self.text[start:stop] if self.text is not None else None)

    def expand(self, batch: int, what: str = "text condition") -> TextCondition:
        """`batch` rows: one row broadcast (the empty prompt), or the same `batch` rows; anything else is an error."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ValueError(f"{what} has {self.batch} rows; expected 1 (broadcast) or {batch}")
        text = self.text * batch if isinstance(self.text, list) else self.text
        return self._map(lambda t: t.expand(batch, *t.shape[1:]), text)

    def repeat_interleave(self, repeats: int) -> TextCondition:
        """Each row `repeats` times in a row (a prior's candidates per prompt)."""
        if repeats == 1:
            return self
        text = [t for t in self.text for _ in range(repeats)] if isinstance(self.text, list) else self.text
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0), text)

    def to(self, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> TextCondition:
        """Floating tensors cast to `dtype`, every tensor moved to `device` (masks stay bool)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None), self.text)

    @staticmethod
    def cat(conditions: Sequence[TextCondition]) -> TextCondition:
        """The rows of several conditions, in order (each with the same optional parts)."""
        first = conditions[0]
        join = lambda name: torch.cat([getattr(c, name) for c in conditions]) if getattr(first, name) is not None else None  # noqa: E731
        texts = [c.text for c in conditions]
        text = [t for ts in texts for t in ts] if all(isinstance(t, list) for t in texts) else None
        return TextCondition(join("text_embed"), join("text_encodings"), join("text_mask"), text)

    def _map(self, fn, text) -> TextCondition:
        apply = lambda t: fn(t) if t is not None else None  # noqa: E731
        return TextCondition(fn(self.text_embed), apply(self.text_encodings), apply(self.text_mask), text)


class Condition(NamedTuple):
    """What a decoder cascade is conditioned on: a CLIP image embedding and the text (either may be absent).

    As guidance's unconditional branch (`uncond`), a negative prompt's: its prior embedding and its text.
    """

    image_embed: torch.Tensor | None
    text: TextCondition | None = None


__all__ = ["Condition", "TextCondition"]
