"""Read `.pth` pickles without running code from them: torch's weights-only unpickler plus inert stand-ins.

A pickle can name any importable callable and have the loader call it (`os.system`, `eval`, ...).
`torch.load(weights_only=True)` refuses every global that is not on an allow-list. The only extra
names the LAION files need are those of a pickled `packaging.version.Version`; they are allow-listed
here as `PickledRecord` stand-ins that merely keep their arguments, so not even `packaging` code
runs while a file is read.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose unpickling would import or call something that is not plain data; nothing ran."""


class PickledRecord:
    """Inert stand-in for an allow-listed class in a foreign pickle: it keeps its arguments and state, runs nothing."""

    pickled_name = "?"

    def __new__(cls, *args):
        record = object.__new__(cls)
        record.args, record.state = args, None
        return record

    def __init__(self, *args):  # the arguments were kept by __new__
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"PickledRecord({self.pickled_name}, args={self.args!r}, state={self.state!r})"


def _stand_in(full_name: str) -> type[PickledRecord]:
    return type(full_name.rsplit(".", 1)[1], (PickledRecord,), {"pickled_name": full_name})


# what DALLE2-pytorch's trainers pickle besides tensors and containers: the package version
STAND_INS = {
    name: _stand_in(name)
    for name in (
        "packaging.version.Version",
        "packaging.version._Version",
        "packaging._structures.InfinityType",
        "packaging._structures.NegativeInfinityType",
    )
}
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|new object for .*? but got <class '([\w.]+)'>")


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The object pickled in a `torch.save` file (tensors on CPU), refusing anything that could run code.

    Raises `UnsafeCheckpointError` naming the refused global, `ValueError` for a file that is not a
    readable checkpoint, `FileNotFoundError` for a missing one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    allowed = [(cls, name) for name, cls in STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; failures raise below
            # zip checkpoints are memory-mapped: a multi-GB decoder is not read into RAM twice
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        match = _GLOBAL.search(str(err))
        if match is None:
            raise ValueError(
                f"{path} is not a readable PyTorch checkpoint: the safe loader stopped at "
                f"'{_reason(err)}' (nothing from the file was executed)"
            ) from None
        name = next(g for g in match.groups() if g)
        raise UnsafeCheckpointError(
            f"refused to load {path}: its pickle asks for {name}, which could run code (nothing from the file "
            "was executed); accepted: tensors, plain containers and numbers, packaging versions"
        ) from None
    except Exception as err:  # corrupt zips and truncated files surface as many types
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    """The informative line of torch's multi-paragraph error (the unpickler's own), else the first."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Please file an issue") and i + 1 < len(lines):
            return lines[i + 1][:200]
    return lines[0][:200] if lines else type(err).__name__


def version_string(value: Any) -> str | None:
    """'1.1.0' from a pickled `packaging` Version (a `PickledRecord`) or a plain string; None otherwise."""
    if isinstance(value, str):
        return value
    state = getattr(value, "state", None)
    fields = state.get("_version") if isinstance(state, dict) else None
    args = getattr(fields, "args", ())
    if len(args) >= 2 and isinstance(args[1], tuple):  # _Version(epoch, release, dev, pre, post, local)
        return ".".join(str(part) for part in args[1])
    return None


__all__ = ["PickledRecord", "UnsafeCheckpointError", "load_checkpoint", "version_string"]
