"""The typed-config machinery every network is built from.

Each network has one frozen dataclass config (a `Config` subclass). The seed's keyword API
(`Unet(dim=64, ...)`) goes through `Config.build`, which routes flat keywords into nested
sub-configs and rejects unknown ones with a message naming them.
"""

from __future__ import annotations

import dataclasses
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

    `ALIASES` maps alternative keyword spellings (DALLE2-pytorch's, the seed README's) to
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


def config_dataclass(cls: type[T]) -> type[T]:
    """Decorator: a frozen dataclass that is a `Config`."""
    if not issubclass(cls, Config):
        raise TypeError(f"{cls.__name__} must subclass Config")
    return dataclass(frozen=True)(cls)


__all__ = ["Config", "config_dataclass"]
