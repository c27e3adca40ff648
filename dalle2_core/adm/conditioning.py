"""Text conditioning given explicitly for the unconditional branch of guidance (the empty prompt's encoding).

Karlo learns no null text condition: its prior and decoder take the unconditional branch's text
from CLIP's encoding of the empty prompt, which the caller computes once (one row) and passes as
`uncond`. These helpers read that triple and broadcast it to the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

TEXT_KEYS = ("text_embed", "text_encodings", "text_mask")


def text_conditioning(value, what: str) -> dict:
    """(text_embed, text_encodings, text_mask) from a mapping with those keys or a 3-tuple (`EmbeddedText`)."""
    if isinstance(value, Mapping):
        missing = [k for k in TEXT_KEYS if k not in value]
        if missing:
            raise ValueError(f"{what} lacks {', '.join(missing)}; it needs text_embed, text_encodings, text_mask")
        return {k: value[k] for k in TEXT_KEYS}
    if isinstance(value, Sequence) and len(value) == 3:
        return dict(zip(TEXT_KEYS, value))
    raise ValueError(f"{what} must be a mapping or a 3-tuple (text_embed, text_encodings, text_mask), got {type(value).__name__}")


def expand_rows(cond: dict, rows: int, what: str) -> dict:
    """Conditioning with 1 row broadcast to `rows`, or with `rows` rows kept; anything else is an error."""
    out = {}
    for key, value in cond.items():
        if value is None:
            out[key] = None
        elif value.shape[0] == rows:
            out[key] = value
        elif value.shape[0] == 1:
            out[key] = value.expand(rows, *value.shape[1:])
        else:
            raise ValueError(f"{what} {key} has {value.shape[0]} rows; expected 1 (broadcast) or {rows}")
    return out


__all__ = ["TEXT_KEYS", "expand_rows", "text_conditioning"]
