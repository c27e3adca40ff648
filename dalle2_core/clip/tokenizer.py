"""Tokenisation for every CLIP here: open_clip's tokenizers, with a warning when a prompt is cut."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

from ..helpers import exists

# CLIP's BPE vocabulary (49152 merges + 256 bytes doubled + start/end tokens); the seed uses it too
CLIP_VOCAB_SIZE = 49408


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the CLIP's context and lost its tail."""


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return texts


def full_token_count(tokenizer, text: str) -> int | None:
    """Tokens `text` needs before truncation (start/end tokens included); None if unknowable."""
    if isinstance(tokenizer, SimpleTokenizer) and not exists(tokenizer.reduction_fn):
        return len(tokenizer.encode(text)) + 2
    if isinstance(tokenizer, HFTokenizer):
        return len(tokenizer.tokenizer(tokenizer.clean_fn(text))["input_ids"])
    return None


def tokenize(tokenizer, texts: str | Sequence[str], context_length: int) -> torch.Tensor:
    """(b, context_length) token ids; warns `PromptTruncatedWarning` for each prompt that was cut."""
    texts = as_text_list(texts)
    tokens = tokenizer(texts, context_length=context_length)
    for text in texts:
        needed = full_token_count(tokenizer, text)
        if exists(needed) and needed > context_length:
            shown = text if len(text) <= 60 else text[:57] + "..."
            warnings.warn(
                f"prompt {shown!r} needs {needed} tokens but the context is {context_length}: "
                f"{needed - context_length} token(s) were dropped",
                PromptTruncatedWarning,
                stacklevel=3,
            )
    return tokens.long()


def truncate_tokens(tokens: torch.Tensor, max_len: int, pad_id: int = 0) -> torch.Tensor:
    """Token ids cut to `max_len` columns; warns if anything but padding is dropped."""
    if tokens.shape[-1] <= max_len:
        return tokens
    tail = tokens[..., max_len:]
    dropped = int((tail != pad_id).sum(dim=-1).max())
    if dropped > 0:
        warnings.warn(
            f"token ids have {tokens.shape[-1]} positions but the CLIP reads {max_len}: "
            f"up to {dropped} non-padding token(s) per row were dropped",
            PromptTruncatedWarning,
            stacklevel=3,
        )
    return tokens[..., :max_len]


def clip_bpe_tokenizer(context_length: int) -> SimpleTokenizer:
    """open_clip's BPE tokenizer (start/end tokens, zero padding) at the given context length."""
    return SimpleTokenizer(context_length=context_length)


__all__ = [
    "CLIP_VOCAB_SIZE",
    "PromptTruncatedWarning",
    "clip_bpe_tokenizer",
    "full_token_count",
    "tokenize",
    "truncate_tokens",
]
