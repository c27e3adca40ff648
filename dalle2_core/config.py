"""The typed-config machinery every network is built from.

Each network has one frozen dataclass config (a `Config` subclass). The DALLE2-pytorch README's keyword API
(`Unet(dim=64, ...)`) goes through `Config.build`, which routes flat keywords into nested
sub-configs and rejects unknown ones with a message naming them. Every value is checked against
its field's annotation when a config is made (keywords, `from_dict`, or the dataclass itself), so a
`"dim": "64"` in a JSON file is a one-line error naming the option, not a failure deep inside.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from dalle2_core.helpers import exists

T = TypeVar("T")
C = TypeVar("C", bound="Config")


def _to_tuples(value):
    """JSON gives lists; configs hold tuples so they stay hashable and frozen."""
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


@dataclass(frozen=True)
class Config:
    """Base of every network config: frozen, JSON round-trippable, buildable from flat keywords.

    `ALIASES` maps alternative keyword spellings (DALLE2-pytorch's and its README's) to
    `(option, convert)`: `build` reads `alias=value` as `option=convert(value)` (`value` when
    `convert` is None); an alias of None means "not given".
    """

    ALIASES: ClassVar[dict[str, tuple[str, Callable[[Any], Any] | None]]] = {}

    @classmethod
    def _sub_configs(cls) -> dict[str, type[Config]]:
        hints = typing.get_type_hints(cls)
        return {
            f.name: hints[f.name]
            for f in fields(cls)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], Config)
        }

    @classmethod
    def _all_option_names(cls) -> list[str]:
        subs = cls._sub_configs()
        names = []
        for f in fields(cls):
            names += subs[f.name]._all_option_names() if f.name in subs else [f.name]
        return names

    @classmethod
    def build(cls: type[C], config: C | dict | None = None, owner: str | None = None, **kwargs) -> C:
        """A config from an existing config/dict plus flat keyword overrides.

        Keywords may name a field of this config or of any nested sub-config; anything else is an
        error that lists what is accepted.
        """
        kwargs = cls._resolve_aliases(kwargs)
        if isinstance(config, dict):
            config = cls.from_dict(config)
        if exists(config) and not isinstance(config, cls):
            raise TypeError(f"expected a {cls.__name__} or dict, got {type(config).__name__}")
        subs = cls._sub_configs()
        top: dict[str, Any] = {}
        routed: dict[str, dict[str, Any]] = {name: {} for name in subs}
        unknown = []
        for key, value in kwargs.items():
            if key in cls.__dataclass_fields__ and key not in subs:
                top[key] = value
                continue
            owner_sub = next((s for s, sc in subs.items() if key in sc._all_option_names()), None)
            if exists(owner_sub):
                routed[owner_sub][key] = value
            elif key in subs:
                top[key] = value  # a whole sub-config passed as one keyword
            else:
                unknown.append(key)
        if unknown:
            who = owner or cls.__name__.removesuffix("Config")
            raise TypeError(
                f"{who} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(sorted(cls._all_option_names()))}"
            )
        for name, sub_cls in subs.items():
            base_sub = top.pop(name, getattr(config, name) if exists(config) else None)
            top[name] = sub_cls.build(base_sub, owner=owner, **routed[name])
        top = {k: _to_tuples(v) for k, v in top.items()}
        try:
            return dataclasses.replace(config, **top) if exists(config) else cls(**top)
        except TypeError as err:  # missing required options
            raise TypeError(f"{owner or cls.__name__}: {err}") from None

    @classmethod
    def _resolve_aliases(cls, kwargs: dict) -> dict:
        """`kwargs` with every alias replaced by the option it spells; a contradiction is an error."""
        out = dict(kwargs)
        for alias, (name, convert) in cls.ALIASES.items():
            value = out.pop(alias, None)
            if value is None:
                continue
            value = convert(value) if exists(convert) else value
            if name in out and _to_tuples(out[name]) != _to_tuples(value):
                raise ValueError(f"{alias}={kwargs[alias]!r} contradicts {name}={out[name]!r}")
            out[name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        subs = cls._sub_configs()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown} in config; accepted: {sorted(known)}")
        values = {
            k: subs[k].from_dict(v) if k in subs and isinstance(v, dict) else _to_tuples(v)
            for k, v in data.items()
        }
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _matches(value, annotation) -> bool:
    """Whether `value` fits a field annotation: int, float (ints too), bool (not ints), str, X | None,
    tuple[X, ...] / tuple[X, Y], a sub-config, and anything else by isinstance (`dict`: shallow)."""
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation in (int, float):
        numbers = (int, float) if annotation is float else (int,)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return isinstance(value, origin or annotation)


def _type_text(annotation) -> str:
    """An annotation in words, for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_type_text(args[0])}"
        return f"({', '.join(_type_text(a) for a in args)})"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _field_types(cls: type[Config]) -> dict[str, Any]:
    """The resolved annotation of each field, kept on the class after the first look-up."""
    if "_field_type_hints" not in cls.__dict__:
        hints = typing.get_type_hints(cls)
        type.__setattr__(cls, "_field_type_hints", {f.name: hints[f.name] for f in fields(cls)})
    return cls.__dict__["_field_type_hints"]


def check_field_types(config: Config) -> None:
    """Lists become tuples (configs stay hashable); a value that does not fit its field's annotation is
    a TypeError naming the option, the value and the type expected."""
    for name, annotation in _field_types(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, list):
            value = _to_tuples(value)
            object.__setattr__(config, name, value)
        if not _matches(value, annotation):
            raise TypeError(
                f"{type(config).__name__} option {name!r} must be {_type_text(annotation)}, "
                f"got {value!r} ({type(value).__name__})"
            )


def config_dataclass(cls: type[T]) -> type[T]:
    """Decorator: a frozen dataclass that is a `Config`, its values type-checked before its own
    `__post_init__` (if any) validates them."""
    if not issubclass(cls, Config):
        raise TypeError(f"{cls.__name__} must subclass Config")
    own_post_init = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        check_field_types(self)
        if own_post_init is not None:
            own_post_init(self)

    cls.__post_init__ = __post_init__
    return dataclass(frozen=True)(cls)


__all__ = ["Config", "check_field_types", "config_dataclass"]
