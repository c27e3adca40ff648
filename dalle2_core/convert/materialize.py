"""Fill a module from safetensors files without holding its weights twice.

The module is built with its parameters on the `meta` device (no memory, no initialisation) and its
buffers built for real, so non-persistent buffers (causal masks, frequency tables) hold what the
constructor computes, as accelerate's `init_empty_weights` does for diffusers. Each tensor is then
read from the memory-mapped files (`safetensors.safe_open`), renamed or reshaped by a key map, cast
to the wanted dtype and device one at a time, and assigned (`load_state_dict(assign=True)`): a tensor
that needs no cast stays a view of the mapped file. The key map is checked before any tensor is read:
each source tensor is used exactly once, each target is filled exactly once, and shapes agree.
A tensor of 1 MiB or more that is cast or combined is read through a memory map of its own, released with
it, so the peak stays near the size of the loaded weights (`benchmarks/karlo_memory.py`).

Values are bit-identical to a plain load. A tensor left as a view of the file is only as aligned as
safetensors' layout (16 bytes), where CPU kernels may vectorise differently from a fresh allocation:
outputs can then differ from a plain load's at float rounding (1e-7 in `tests/networks/test_hf_clip_adapter.py`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from dalle2_core.helpers import exists

# safetensors' dtype names (the file header's "dtype" strings)
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class WeightsError(ValueError):
    """Weights that do not fit the module they should fill; the message is one line."""


def few(keys, n: int = 3) -> str:
    """The first `n` of `keys` (sorted), and how many more there are: for one-line messages."""
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --- where tensors come from ---------------------------------------------------------------------------


class SafetensorsWeights:
    """The tensors of one or more safetensors files (shards of one state dict), read lazily.

    Shapes and dtypes come from the file headers without reading data; `get` returns a tensor backed
    by the file's memory map. Use as a context manager, or call `close()`.

    `get(..., transient=True)` reads through a memory map of its own that lives only as long as the
    returned tensors: for a tensor about to be cast or combined into a new one, the pages read are
    released with it instead of staying resident until the file is closed.
    """

    def __init__(self, files: Sequence[str | os.PathLike], what: str | None = None):
        self.files = [Path(f) for f in files]
        self.what = what or ", ".join(f.name for f in self.files)
        self._handles = []
        self._where: dict[str, object] = {}
        self._path: dict[str, Path] = {}
        for path in self.files:
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as err:  # safetensors reports a bad header with several exception types
                raise WeightsError(f"{path} is not a readable safetensors file ({' '.join(str(err).split())[:200]})") from None
            self._handles.append(handle)
            for key in handle.keys():
                if key in self._where:
                    raise WeightsError(f"{self.what}: tensor {key!r} is stored twice (in {path.name} and another shard)")
                self._where[key] = handle
                self._path[key] = path

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._where[key].get_slice(key).get_dtype()
        if name not in SAFETENSORS_DTYPES:
            raise WeightsError(f"{self.what}: tensor {key!r} has dtype {name}; readable: {', '.join(SAFETENSORS_DTYPES)}")
        return SAFETENSORS_DTYPES[name]

    def get(self, key: str, transient: bool = False) -> torch.Tensor:
        if transient:  # a handle (and memory map) of its own, dropped here; the tensor keeps what it needs
            return safe_open(str(self._path[key]), framework="pt", device="cpu").get_tensor(key)
        return self._where[key].get_tensor(key)

    def metadata(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for handle in self._handles:
            merged.update(handle.metadata() or {})
        return merged

    def close(self) -> None:
        # the memory maps live as long as the tensors taken from them; this drops the file handles
        self._handles.clear()
        self._where.clear()
        self._path.clear()

    def __enter__(self) -> SafetensorsWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorDict:
    """In-memory tensors behind the same interface as `SafetensorsWeights` (tests, converted state dicts)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], what: str = "state dict"):
        self._tensors, self.what = dict(tensors), what

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def get(self, key: str, transient: bool = False) -> torch.Tensor:
        return self._tensors[key]


class NamespacedWeights:
    """Several weight sets behind one interface, each tensor named `{namespace}{name}`: two files that name their
    tensors alike (a text encoder's and a whole CLIPModel's `text_model.*`) fill one module without clashing."""

    def __init__(self, parts: Mapping[str, SafetensorsWeights | TensorDict]):
        self._parts = dict(parts)
        self.what = " + ".join(w.what for w in self._parts.values())

    def _part(self, key: str) -> tuple[SafetensorsWeights | TensorDict, str]:
        for namespace, weights in self._parts.items():
            if key.startswith(namespace) and key[len(namespace):] in weights:
                return weights, key[len(namespace):]
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [namespace + key for namespace, weights in self._parts.items() for key in weights.keys()]

    def __contains__(self, key: str) -> bool:
        try:
            self._part(key)
        except KeyError:
            return False
        return True

    def shape(self, key: str) -> tuple[int, ...]:
        weights, name = self._part(key)
        return weights.shape(name)

    def dtype(self, key: str) -> torch.dtype:
        weights, name = self._part(key)
        return weights.dtype(name)

    def get(self, key: str, transient: bool = False) -> torch.Tensor:
        weights, name = self._part(key)
        return weights.get(name, transient=transient)


Weights = SafetensorsWeights | TensorDict | NamespacedWeights


# --- key maps ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """`target` of the module <- `fn(*sources)`; without `fn` the single source is taken as it is."""

    target: str
    sources: tuple[str, ...]
    fn: Callable[..., torch.Tensor] | None = None


@dataclass(frozen=True)
class Drop:
    """A source tensor that is read and checked but fills nothing (e.g. a stored arange).

    `check(tensor)` returns None when the tensor is as expected, else a short description of what is
    wrong. `optional`: the files may lack it (older writers stored it, newer ones do not).
    """

    source: str
    check: Callable[[torch.Tensor], str | None] | None = None
    optional: bool = False


@dataclass(frozen=True)
class Keep:
    """A persistent buffer of the module that no file holds: its constructed value is kept."""

    target: str


Entry = Rule | Drop | Keep


def in_namespace(entries: Sequence[Entry], namespace: str) -> list[Entry]:
    """A key map whose source tensors are read from `namespace` of a `NamespacedWeights`."""
    out: list[Entry] = []
    for entry in entries:
        if isinstance(entry, Rule):
            out.append(Rule(entry.target, tuple(namespace + s for s in entry.sources), entry.fn))
        elif isinstance(entry, Drop):
            out.append(Drop(namespace + entry.source, entry.check, entry.optional))
        else:
            out.append(entry)
    return out


def rename(source: str, target: str) -> Rule:
    return Rule(target, (source,))


def identity_key_map(keys: Iterable[str]) -> list[Rule]:
    """Every tensor fills the module entry of the same name."""
    return [Rule(k, (k,)) for k in keys]


def _dedupe(names: list[str], what: str, kind: str) -> None:
    seen, twice = set(), set()
    for name in names:
        (twice if name in seen else seen).add(name)
    if twice:
        raise WeightsError(f"{what}: the key map uses {kind} {few(twice)} more than once")


def _meta_result(rule: Rule, weights: Weights) -> torch.Tensor:
    tensors = [torch.empty(weights.shape(s), dtype=weights.dtype(s), device="meta") for s in rule.sources]
    if rule.fn is None:
        if len(tensors) != 1:
            raise WeightsError(f"rule for {rule.target!r} combines {len(tensors)} tensors but has no fn")
        return tensors[0]
    return rule.fn(*tensors)


def _shape_problem(rule: Rule, weights: Weights, expected: torch.Tensor) -> str | None:
    try:
        result = _meta_result(rule, weights)
        got = tuple(result.shape)
    except (RuntimeError, ValueError, IndexError) as err:  # e.g. a concatenation of mismatched shapes
        got, result = f"no tensor ({' '.join(str(err).split())[:80]})", None
    if exists(result) and got == tuple(expected.shape):
        return None
    want = f"{rule.target!r} of the module has shape {tuple(expected.shape)}"
    if rule.fn is None:
        return f"tensor {rule.sources[0]!r} has shape {got}; {want}"
    shapes = ", ".join(f"{s!r} {weights.shape(s)}" for s in rule.sources)
    return f"tensor(s) {shapes} give {got}; {want}"


def check_key_map(weights: Weights, key_map: Sequence[Entry], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise `WeightsError` unless `key_map` uses every tensor of `weights` once and fills every entry of
    `expected` once with the right shape. Reads headers only (shapes are worked out on `meta`)."""
    rules = [e for e in key_map if isinstance(e, Rule)]
    drops = [e for e in key_map if isinstance(e, Drop)]
    keeps = [e for e in key_map if isinstance(e, Keep)]
    _dedupe([s for r in rules for s in r.sources] + [d.source for d in drops], what, "source tensor(s)")
    _dedupe([r.target for r in rules] + [k.target for k in keeps], what, "target(s)")
    available = set(weights.keys())
    used = {s for r in rules for s in r.sources} | {d.source for d in drops}
    problems = []
    missing = {s for r in rules for s in r.sources if s not in available}
    missing |= {d.source for d in drops if not d.optional and d.source not in available}
    if missing:
        problems.append(f"missing tensor(s) {few(missing)}")
    if available - used:
        problems.append(f"unexpected tensor(s) {few(available - used)}")
    filled = {r.target for r in rules} | {k.target for k in keeps}
    if filled - set(expected):
        problems.append(f"the module has no {few(filled - set(expected))}")
    if set(expected) - filled:
        problems.append(f"nothing fills {few(set(expected) - filled)}")
    if problems:
        raise WeightsError(f"{what}: " + "; ".join(problems))
    for rule in rules:
        problem = _shape_problem(rule, weights, expected[rule.target])
        if exists(problem):
            raise WeightsError(f"{what}: {problem}")


# --- building on meta and filling ----------------------------------------------------------------------


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with every parameter it registers moved to `meta` (buffers are built for real).

    Uses torch's parameter-registration hook, active only in the calling thread and removed on return.
    """
    thread = threading.get_ident()

    def to_meta(_module, _name, param):
        if param is None or param.is_meta or threading.get_ident() != thread:
            return None
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(to_meta)
    try:
        with _NoInitOnMeta():
            return build()
    finally:
        handle.remove()


class _NoInitOnMeta(TorchFunctionMode):
    """`torch.nn.init` and `Tensor.normal_` on a `meta` tensor left out: it holds no values, and torch runs `normal_`
    on `meta` through a Python reference whose first call imports torch._dynamo (1.5 s of start-up).
    Torch function modes are per thread."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ or getattr(func, "__module__", None) == "torch.nn.init":
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def _aliases(module: nn.Module) -> dict[str, str]:
    """Tied parameters: every name after the first of one parameter -> that first name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return module.get_submodule(path), leaf


def _target_dtype(like: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if exists(dtype) and like.is_floating_point() else like.dtype


def _cast(tensor: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    return tensor.to(device=device, dtype=_target_dtype(like, dtype))


def _makes_a_copy(rule: Rule, weights: Weights, like: torch.Tensor, dtype, device) -> bool:
    """Whether filling `rule` creates a new tensor (combined, cast or moved) rather than a view of the file."""
    moved = exists(device) and torch.device(device).type != "cpu"
    return exists(rule.fn) or moved or weights.dtype(rule.sources[0]) != _target_dtype(like, dtype)


TRANSIENT_MIN_BYTES = 2**20


def _read_transiently(rule: Rule, weights: Weights, like: torch.Tensor, dtype, device) -> bool:
    """Whether `rule`'s sources are read through memory maps of their own (`SafetensorsWeights.get`): filling it makes
    a copy, and they are large enough that releasing their pages with it is worth opening a map per tensor (~0.3 ms,
    which over the hundreds of small tensors of a small model was most of its loading)."""
    size = sum(math.prod(weights.shape(s)) * weights.dtype(s).itemsize for s in rule.sources)
    return size >= TRANSIENT_MIN_BYTES and _makes_a_copy(rule, weights, like, dtype, device)


MAX_BUFFER_BYTES = 2**32  # tensors a module builds itself (tables, masks): far below this in every model here


def _checked_before_building(build: Callable[[], nn.Module], weights, key_map, what: str):
    """The key map checked against `build()` made on the meta device, where nothing is allocated: a config whose
    sizes disagree with the weights (or ask for petabytes) is refused before any real tensor exists. A build that
    computes with real values cannot run on meta; it is checked after building, as before."""
    try:
        with torch.device("meta"):
            probe = build()
    except Exception:  # noqa: BLE001 - any failure here only means the probe cannot run
        return key_map
    aliases = _aliases(probe)
    expected = {k: v for k, v in probe.state_dict(keep_vars=True).items() if k not in aliases}
    mapped = identity_key_map(k for k in weights.keys() if k in expected) if key_map is None else list(key_map)
    check_key_map(weights, mapped, expected, what)
    own = sum(b.numel() * b.element_size() for n, b in probe.named_buffers() if n not in expected)
    if own > MAX_BUFFER_BYTES:
        raise WeightsError(f"{what}: its config makes the module build {own / 2**30:.0f} GiB of its own tensors; "
                           f"at most {MAX_BUFFER_BYTES / 2**30:.0f} GiB are accepted")
    return key_map


def materialize(
    build: Callable[[], nn.Module],
    weights: Weights | Mapping[str, torch.Tensor],
    key_map: Sequence[Entry] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    what: str | None = None,
) -> nn.Module:
    """`build()` filled from `weights` through `key_map` (default: same names), in `dtype` on `device`.

    Equal, bit for bit, to building normally, `load_state_dict` and `.to(device, dtype)`: floating
    tensors take `dtype` (default: the dtype the module was built with), others keep the module's
    dtype; buffers that no file holds (non-persistent ones, `Keep` entries) are moved and cast the same
    way. The module is returned in the mode `build()` left it in.
    """
    if not isinstance(weights, (SafetensorsWeights, TensorDict, NamespacedWeights)):
        weights = TensorDict(weights)
    what = what or weights.what
    key_map = _checked_before_building(build, weights, None if key_map is None else list(key_map), what)
    module = build_on_meta(build)
    aliases = _aliases(module)
    expected = {k: v for k, v in module.state_dict(keep_vars=True).items() if k not in aliases}
    # same names: a tensor the module lacks is then reported as unexpected, not as an unknown target
    key_map = identity_key_map(k for k in weights.keys() if k in expected) if key_map is None else list(key_map)
    check_key_map(weights, key_map, expected, what)

    state = {}
    for entry in key_map:
        if isinstance(entry, Rule):
            transient = _read_transiently(entry, weights, expected[entry.target], dtype, device)
            tensors = [weights.get(s, transient=transient) for s in entry.sources]
            value = tensors[0] if entry.fn is None else entry.fn(*tensors)
            state[entry.target] = _cast(value, expected[entry.target], dtype, device)
        elif isinstance(entry, Drop) and exists(entry.check) and entry.source in weights:
            problem = entry.check(weights.get(entry.source))
            if exists(problem):
                raise WeightsError(f"{what}: tensor {entry.source!r} {problem}")
        elif isinstance(entry, Keep):
            state[entry.target] = _cast(expected[entry.target].detach(), expected[entry.target], dtype, device)
    for alias, name in aliases.items():
        state[alias] = state[name]
    module.load_state_dict(state, strict=True, assign=True)
    for alias, name in aliases.items():  # assign made one Parameter per name: tie them again
        owner, leaf = _owner(module, alias)
        source_owner, source_leaf = _owner(module, name)
        owner._parameters[leaf] = source_owner._parameters[source_leaf]
    for name, buffer in module.named_buffers():
        if name not in state:  # non-persistent: built for real, moved and cast like `module.to` would
            owner, leaf = _owner(module, name)
            owner._buffers[leaf] = _cast(buffer, buffer, dtype, device)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise WeightsError(f"{what}: {len(left)} tensor(s) were left unfilled, e.g. {left[0]}")
    return module


def state_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> str | None:
    """What keeps `state` (from `source`, e.g. "weights") from loading into a module whose state is `expected`:
    missing and unexpected keys and shape mismatches, in one line; None when it fits."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {few(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch ({source} vs config) {few(wrong)}")
    return "; ".join(problems) or None


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """The mapped file tensors must be exactly the module's: no key missing, extra or of another shape."""
    problem = state_mismatch(state, expected, "file")
    if exists(problem):
        raise ValueError(f"{what} weights do not match the converted config: {problem}")


__all__ = [
    "Drop",
    "Keep",
    "NamespacedWeights",
    "Rule",
    "SAFETENSORS_DTYPES",
    "SafetensorsWeights",
    "TensorDict",
    "WeightsError",
    "build_on_meta",
    "check_key_map",
    "check_state",
    "few",
    "identity_key_map",
    "in_namespace",
    "materialize",
    "rename",
    "state_mismatch",
]
