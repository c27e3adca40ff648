"""Small helpers shared by the whole library, and the typed-config machinery.

Every network is built from one frozen dataclass config (`Config` subclass). The seed's keyword API
(`Unet(dim=64, ...)`) goes through `Config.build`, which routes flat keywords into nested
sub-configs and rejects unknown ones with a message naming them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T")
C = TypeVar("C", bound="Config")


def exists(val) -> bool:
    return val is not None


def default(val, d):
    if exists(val):
        return val
    return d() if callable(d) else d


def cast_tuple(val, length: int | None = None) -> tuple:
    """`val` as a tuple; a scalar is repeated `length` times (once if no length)."""
    out = tuple(val) if isinstance(val, (tuple, list)) else (val,) * default(length, 1)
    if exists(length) and len(out) != length:
        raise ValueError(f"expected {length} values, got {len(out)}: {out!r}")
    return out


def randn(shape, *, generator=None, device=None, dtype=None) -> torch.Tensor:
    """`torch.randn`, where `generator` may also be one generator per sample: each then draws its own
    equal share of the rows, so a sample's noise is the same whether it is drawn alone or in a batch."""
    if not isinstance(generator, (list, tuple)):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    rows, n = shape[0], len(generator)
    if n == 0 or rows % n:
        raise ValueError(f"{n} generators cannot split {rows} rows evenly; pass one generator or one per sample")
    return torch.cat([torch.randn((rows // n, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def l2norm(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(t, dim=dim)


def normalize_neg_one_to_one(img: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (the public API) to [-1, 1] (the diffusion space)."""
    return img * 2 - 1


def unnormalize_zero_to_one(img: torch.Tensor) -> torch.Tensor:
    return (img + 1) * 0.5


def _to_tuples(value):
    """JSON gives lists; configs hold tuples so they stay hashable and frozen."""
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


@dataclass(frozen=True)
class Config:
    """Base of every network config: frozen, JSON round-trippable, buildable from flat keywords."""

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


__all__ = [
    "Config",
    "cast_tuple",
    "config_dataclass",
    "default",
    "exists",
    "l2norm",
    "normalize_neg_one_to_one",
    "unnormalize_zero_to_one",
]
