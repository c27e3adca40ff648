"""Tokenisation for every CLIP here, with a warning when a prompt is cut.

`ClipTokenizer` is OpenAI CLIP's byte-level BPE run by Hugging Face's `tokenizers` (the Rust tokenizer transformers'
`CLIPTokenizer` runs since 5.0, and its `CLIPTokenizerFast` before): NFC, runs of white space to one space, lower
case; split into contractions, letter runs, single digits and runs of other symbols; byte-level BPE with "</w>" at
word ends; start / end tokens around the prompt; truncated to the context with the end token kept, then padded. Its
ids and attention masks are transformers' (tests/networks/test_hf_clip_tokenizer.py: 51 prompts, both padding conventions).
transformers 4's Python `CLIPTokenizer` cleaned text with ftfy and HTML unescaping first when ftfy was installed;
diffusers and transformers >= 5 do not, and neither does this tokenizer.

`ClipTokenizer.from_folder` reads a Hugging Face tokenizer folder in either layout the Hub holds (`vocab.json` +
`merges.txt`, `tokenizer.json`, or both) and refuses one that is not OpenAI's BPE, naming the file and its first
differing entry. The padding token and the context length come from the folder. OpenAI's BPE itself is the merges
file open_clip ships (`bpe_simple_vocab_16e6.txt.gz`, the file of OpenAI's CLIP repository), found without
importing open_clip. open_clip models keep open_clip's own tokenizers (`tokenize` takes those too).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..helpers import exists

# CLIP's BPE vocabulary (49152 merges + 256 bytes doubled + start/end tokens); the DALLE2-pytorch README uses it too
CLIP_VOCAB_SIZE = 49408
SOT, EOT = "<|startoftext|>", "<|endoftext|>"  # Hugging Face's names (open_clip's: <start_of_text>, <end_of_text>)
DEFAULT_PAD_TOKEN = EOT  # transformers' CLIPTokenizer pads with it when a folder names no padding token
# contractions, letter runs, single digits, other symbols; the special tokens first, as transformers' pattern has them
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPECIALS_FIRST = re.escape(SOT) + "|" + re.escape(EOT) + "|"
_TOKENIZER_JSON, _VOCAB_JSON, _MERGES_TXT = "tokenizer.json", "vocab.json", "merges.txt"
_SETTINGS = ("tokenizer_config.json", "special_tokens_map.json")


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the CLIP's context and lost its tail."""


class TokenizerFolderError(ValueError):
    """A tokenizer folder this CLIP cannot use; the message is one line naming the file."""


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return texts


# --- OpenAI's BPE -----------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """OpenAI's printable stand-ins for the 256 byte values, in the order of the vocabulary's first 256 entries: the
    printable Latin-1 bytes as themselves, then every other byte as a character from U+0100 on."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return [chr(b) for b in kept] + [chr(256 + n) for n in range(len(others))]


def openai_merges_file() -> Path:
    """open_clip's copy of OpenAI's BPE merges, located without importing open_clip (which loads torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if exists(spec) else []:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise FileNotFoundError("OpenAI's BPE merges (open_clip's bpe_simple_vocab_16e6.txt.gz) are not installed; "
                            "install open_clip_torch")


@functools.cache
def openai_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """OpenAI CLIP's vocabulary (token -> id, Hugging Face's special-token names) and its merges, in rank order."""
    lines = gzip.open(openai_merges_file()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = tuple(tuple(line.split()) for line in lines)
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), SOT, EOT]
    return {token: i for i, token in enumerate(tokens)}, merges


@functools.cache
def _backend(pad_token: str | None, context_length: int | None):
    """A `tokenizers.Tokenizer` of OpenAI's BPE that truncates and pads to `context_length` (None: neither), kept per
    setting."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = openai_bpe()
    tok = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token=EOT))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPECIALS_FIRST + _SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.post_processor = processors.RobertaProcessing((EOT, vocab[EOT]), (SOT, vocab[SOT]), trim_offsets=False,
                                                      add_prefix_space=False)
    # a padding token is a special token: transformers matches it in the text too ("!" then is id 0 wherever it stands)
    specials = [SOT, EOT] + ([pad_token] if exists(pad_token) and pad_token not in (SOT, EOT) else [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if exists(context_length):
        tok.enable_truncation(max_length=context_length)
        tok.enable_padding(length=context_length, pad_id=vocab[pad_token] if exists(pad_token) else 0, pad_token=pad_token or "!")
    return tok


class ClipTokenizer:
    """OpenAI CLIP's BPE at a context length, padded with `pad_token` (see the module docstring).

    `pad_token=None` pads with id 0 and keeps "!" as text, as open_clip's tokenizer does (what the project CLIP
    trains with); a padding token is otherwise a special token, matched in the text too, as transformers does.
    `tokenizer(texts)` gives (b, context_length) ids; `encode(texts)` the ids and the attention masks.
    """

    def __init__(self, context_length: int = 77, pad_token: str | None = DEFAULT_PAD_TOKEN):
        vocab, _ = openai_bpe()
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (start and end tokens), got {context_length!r}")
        if exists(pad_token) and pad_token not in vocab:
            raise ValueError(f"padding token {pad_token!r} is not in OpenAI's BPE vocabulary")
        self.context_length, self.pad_token = context_length, pad_token
        self.pad_id = vocab[pad_token] if exists(pad_token) else 0
        self.sot_id, self.eot_id, self.vocab_size = vocab[SOT], vocab[EOT], len(vocab)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, context_length: int | None = None) -> ClipTokenizer:
        """The tokenizer of a Hugging Face tokenizer folder, checked to be OpenAI's BPE; `context_length` (the text
        tower's) must equal the folder's `model_max_length` where it names one."""
        settings = read_tokenizer_folder(folder)
        length = settings["model_max_length"]
        if exists(context_length) and exists(length) and length != context_length:
            raise TokenizerFolderError(f"tokenizer {folder} has model_max_length {length}; the text tower reads {context_length}")
        return cls(context_length if exists(context_length) else length or 77, settings["pad_token"])

    def __repr__(self) -> str:
        return f"ClipTokenizer(context_length={self.context_length}, pad_token={self.pad_token!r})"

    def encode(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) of shape (b, context_length): long ids, and True on every token but the padding."""
        backend = _backend(self.pad_token, self.context_length)
        # one at a time: encode_batch's thread pool makes every later fork (data loader workers) warn on stderr
        encodings = [backend.encode(text) for text in as_text_list(texts)]
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(-1, self.context_length)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool).reshape(-1, self.context_length)
        return ids, mask

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if exists(context_length) and context_length != self.context_length:
            return ClipTokenizer(context_length, self.pad_token)(texts)
        return self.encode(texts)[0]

    def token_count(self, text: str) -> int:
        """Tokens `text` needs before truncation, start and end tokens included."""
        return len(_backend(self.pad_token, None).encode(text).ids)


# --- Hugging Face tokenizer folders ------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerFolderError(f"cannot read {path} ({' '.join(str(err).split())[:160]})") from None


def _content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _first_vocab_difference(vocab: dict) -> str | None:
    reference, _ = openai_bpe()
    for token, i in reference.items():
        if vocab.get(token) != i:
            at = [t for t, j in vocab.items() if j == i][:1]
            here = f"id {vocab[token]}" if token in vocab else "absent"
            return f"entry {token!r} is {here}; OpenAI's BPE has it at id {i}" + (f" (here id {i} is {at[0]!r})" if at else "")
    extra = [t for t in vocab if t not in reference]
    return f"entry {extra[0]!r} (id {vocab[extra[0]]}) is not in OpenAI's BPE" if extra else None


def _first_merge_difference(merges: list) -> str | None:
    _, reference = openai_bpe()
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    for rank, (ours, theirs) in enumerate(zip(reference, pairs)):
        if ours != theirs:
            return f"merge {rank} is {' '.join(theirs)!r}; OpenAI's BPE has {' '.join(ours)!r}"
    if len(pairs) != len(reference):
        return f"it has {len(pairs)} merges; OpenAI's BPE has {len(reference)}"
    return None


def _canonical_json() -> dict:
    return json.loads(_backend(None, None).to_str())


def _without_specials(pre_tokenizer):
    """A pre-tokenizer's JSON with the special tokens dropped from its split pattern (older files do not list them:
    special tokens are split off before the pre-tokenizer runs, so the ids are the same)."""
    text = json.dumps(pre_tokenizer).replace(json.dumps(_SPECIALS_FIRST)[1:-1], "")
    return json.loads(text)


def _first_pipeline_difference(data: dict) -> str | None:
    """Where a tokenizer.json's normaliser, pre-tokeniser, model options or post-processor would give other ids."""
    ours = _canonical_json()
    model_keys = ("type", "dropout", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback", "ignore_merges")
    checks = [
        ("normalizer", data.get("normalizer"), ours["normalizer"]),
        ("pre_tokenizer", _without_specials(data.get("pre_tokenizer")), _without_specials(ours["pre_tokenizer"])),
        *((f"model.{k}", (data.get("model") or {}).get(k), ours["model"][k]) for k in model_keys),
        *((f"post_processor.{k}", (data.get("post_processor") or {}).get(k), ours["post_processor"][k]) for k in ("type", "sep", "cls")),
    ]
    for where, theirs, expected in checks:
        if theirs != expected and not (where == "model.continuing_subword_prefix" and theirs is None):
            return f"{where} is {json.dumps(theirs)[:120]}; OpenAI's CLIP tokenizer has {json.dumps(expected)[:120]}"
    return None


def _check_bpe(folder: Path) -> dict:
    """Check every vocabulary the folder holds against OpenAI's BPE; the tokenizer.json's added tokens (or {})."""
    found = False
    added = {}
    if (folder / _TOKENIZER_JSON).is_file():
        path = folder / _TOKENIZER_JSON
        data = _read_json(path)
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
            raise TokenizerFolderError(f"{path} has no BPE model.vocab / model.merges; expected OpenAI CLIP's BPE")
        problem = _first_vocab_difference(model["vocab"]) or _first_merge_difference(model["merges"]) or _first_pipeline_difference(data)
        if exists(problem):
            raise TokenizerFolderError(f"{path} is not OpenAI CLIP's BPE: {problem}")
        added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
        vocab, _ = openai_bpe()
        stray = [(t, i) for t, i in added.items() if vocab.get(t) != i]
        if stray:
            raise TokenizerFolderError(f"{path} is not OpenAI CLIP's BPE: added token {stray[0][0]!r} (id {stray[0][1]}) is not in it")
        found = True
    if (folder / _VOCAB_JSON).is_file() or (folder / _MERGES_TXT).is_file():
        for name in (_VOCAB_JSON, _MERGES_TXT):
            if not (folder / name).is_file():
                raise TokenizerFolderError(f"tokenizer {folder} has {_VOCAB_JSON} or {_MERGES_TXT} but not both")
        vocab = _read_json(folder / _VOCAB_JSON)
        problem = _first_vocab_difference(vocab) if isinstance(vocab, dict) else "it is not a token -> id object"
        if exists(problem):
            raise TokenizerFolderError(f"{folder / _VOCAB_JSON} is not OpenAI CLIP's BPE vocabulary: {problem}")
        try:
            lines = (folder / _MERGES_TXT).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise TokenizerFolderError(f"cannot read {folder / _MERGES_TXT} ({err})") from None
        merges = [line for line in lines if line and not line.startswith("#version")]
        problem = _first_merge_difference(merges)
        if exists(problem):
            raise TokenizerFolderError(f"{folder / _MERGES_TXT} is not OpenAI CLIP's BPE: {problem}")
        found = True
    if not found:
        raise TokenizerFolderError(
            f"tokenizer {folder} has neither {_TOKENIZER_JSON} nor {_VOCAB_JSON} + {_MERGES_TXT}; expected OpenAI CLIP's BPE"
        )
    return added


def read_tokenizer_folder(folder: str | os.PathLike) -> dict:
    """`{"pad_token", "model_max_length"}` of a Hugging Face CLIP tokenizer folder, after checking that its vocabulary,
    merges and (tokenizer.json) pipeline are OpenAI's BPE and its start / end tokens are CLIP's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerFolderError(f"tokenizer folder {folder} does not exist")
    _check_bpe(folder)
    pads, settings = {}, {}
    for name in _SETTINGS:  # transformers reads tokenizer_config.json, then lets special_tokens_map.json override it
        if (folder / name).is_file():
            data = _read_json(folder / name)
            settings.update(data if isinstance(data, dict) else {})
            if isinstance(data, dict) and exists(_content(data.get("pad_token"))):
                pads[name] = _content(data["pad_token"])
    if (folder / _TOKENIZER_JSON).is_file():
        padding = _read_json(folder / _TOKENIZER_JSON).get("padding")
        if isinstance(padding, dict) and exists(padding.get("pad_token")):
            pads[_TOKENIZER_JSON] = padding["pad_token"]
    if len(set(pads.values())) > 1:
        named = ", ".join(f"{name} {token!r}" for name, token in pads.items())
        raise TokenizerFolderError(f"tokenizer {folder} names two padding tokens: {named}")
    for key, expected in (("bos_token", SOT), ("eos_token", EOT)):
        token = _content(settings.get(key, expected))
        if token != expected:
            raise TokenizerFolderError(f"tokenizer {folder} has {key} {token!r}; OpenAI's CLIP has {expected!r}")
    pad = next(iter(pads.values()), DEFAULT_PAD_TOKEN)
    vocab, _ = openai_bpe()
    if pad not in vocab:
        raise TokenizerFolderError(f"tokenizer {folder} pads with {pad!r}, which is not in OpenAI's BPE vocabulary")
    length = settings.get("model_max_length")
    if exists(length) and (not isinstance(length, int) or length > 10**6):
        length = None  # transformers writes a huge number for "no limit"
    return {"pad_token": pad, "model_max_length": length}


# --- calling any tokenizer ------------------------------------------------------------------------------------


def full_token_count(tokenizer, text: str) -> int | None:
    """Tokens `text` needs before truncation (start/end tokens included); None if unknowable."""
    if isinstance(tokenizer, ClipTokenizer):
        return tokenizer.token_count(text)
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer  # only open_clip's own tokenizers reach here

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


__all__ = [
    "CLIP_VOCAB_SIZE",
    "ClipTokenizer",
    "DEFAULT_PAD_TOKEN",
    "PromptTruncatedWarning",
    "TokenizerFolderError",
    "full_token_count",
    "openai_bpe",
    "read_tokenizer_folder",
    "tokenize",
    "truncate_tokens",
]
