"""Text for families whose tokenizer comes with the model: prompts are strings, and the empty prompt's encoding (the
unconditional branch of guidance) is computed once per device and dtype, alongside the first prompts that need it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dalle2_core.conditioning import TextCondition


class ModelPrompts:
    """A mixin for a `Pipeline` with a `clip` adapter whose `embed_text` takes strings (Karlo, Kandinsky)."""

    _empty: dict[tuple, TextCondition]  # the empty prompt's encoding, per (device, dtype); the pipeline's __init__ sets {}

    def encode_text(self, text: Sequence[str] | torch.Tensor) -> TextCondition:
        """The prompts' raw text embeddings, 77 token states and masks (with the empty prompt, if not yet known)."""
        if isinstance(text, torch.Tensor):
            raise ValueError(f"the {self.family} family takes prompts as strings: its tokenizer, padding included, comes with the model")
        with self.on_device(self.clip):
            prompts, key = list(text), self._key()
            extra = [""] if key not in self._empty else []
            with torch.no_grad():
                both = self.clip.embed_text([*prompts, *extra])
            n = len(prompts)
            if extra:
                self._empty[key] = both.rows(n, n + 1)
            return both.rows(0, n)

    def _key(self) -> tuple:
        return (self.device, next(self.clip.parameters()).dtype)

    def _empty_prompt(self) -> TextCondition:
        if self._key() not in self._empty:
            self.encode_text([])
        return self._empty[self._key()]

    def _null_text(self, like: TextCondition) -> TextCondition:
        return self._empty_prompt()  # the empty prompt's row stands for "no text"
