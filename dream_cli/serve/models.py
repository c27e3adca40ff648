"""The models one `dream serve` process holds: each loaded once at start, named, and the only ones a request can ask for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import click

from dream_cli.generate import run_metadata
from dream_cli.output import weights_sha256
from dream_cli.sampling import load

if TYPE_CHECKING:
    from dalle2_core.checkpoint import SamplingSettings
    from dalle2_core.hub import ResolvedModel
    from dalle2_core.pipeline import Pipeline

NAME = re.compile(r"^[A-Za-z0-9][\w.+-]{0,63}$")


@dataclass
class ServedModel:
    """A loaded pipeline under the name requests use for it."""

    name: str
    pipeline: Pipeline
    resolved: ResolvedModel
    sha256: str | None  # of the decoder weights: A1111's model hash is its first 10 hex digits
    precision: str
    overrides: dict = field(default_factory=dict)  # the server's own defaults over the model's (`serve --steps`, ...)

    @property
    def size(self) -> int:
        return self.pipeline.image_size

    @property
    def defaults(self) -> SamplingSettings:
        """What a request that sets nothing gets: the server's overrides over the model's own defaults."""
        return self.pipeline.resolve(self.overrides)

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    def metadata(self, settings) -> dict:
        """What every image of this model records (`dream`'s run metadata), without the server's local paths."""
        info = run_metadata(settings, self.public_resolved(), self.precision, self.pipeline.device)
        info.pop("model_path", None)
        info["model_hash"] = self.sha256
        return info

    def public_resolved(self) -> ResolvedModel:
        """The resolved model as clients may see it: a local folder goes by its served name, never its path."""
        if self.resolved.source == "local":
            return replace(self.resolved, spec=self.name, source="served")
        return self.resolved


def parse_model_option(value: str) -> tuple[str, str]:
    """`--model NAME=SPEC` or `--model SPEC`: (name requests use, spec to load). A folder is named by its last part."""
    name, sep, spec = value.partition("=")
    if sep and NAME.match(name) and spec:
        return name, spec
    spec = value.rstrip("/\\")
    from dalle2_core.hub import parse_hub_id

    if parse_hub_id(spec) is None and any(c in spec for c in "/\\") or spec.startswith((".", "~")):
        name = re.split(r"[/\\]", spec)[-1]
    else:
        name = spec
    if not NAME.match(name.replace("/", "-")):
        raise click.BadParameter(f"{value!r} gives no usable model name; name it: --model NAME=SPEC "
                                 "(NAME: letters, digits, '.', '_', '-', '+')", param_hint="--model")
    return name, spec


def load_models(values: tuple[str, ...], device, dtype, precision: str, offload: bool, quiet: bool,
                overrides: dict | None = None) -> dict[str, ServedModel]:
    """Every `--model`, loaded in the order given (the first is the default), by name; `overrides` (SamplingSettings
    fields) replace each model's defaults, checked against every model here."""
    from dalle2_core.pipeline import SettingError

    named = [parse_model_option(v) for v in values]
    names = [n for n, _ in named]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise click.BadParameter(f"model name {twice[0]!r} is given twice; name them apart with NAME=SPEC", param_hint="--model")
    models = {}
    for name, spec in named:
        pipeline, resolved = load(spec, device, dtype, quiet, offload)
        sha = weights_sha256(resolved.path / "decoder" / "model.safetensors")
        models[name] = served = ServedModel(name, pipeline, resolved, sha, precision, dict(overrides or {}))
        try:
            pipeline.resolve(served.overrides)
        except SettingError as err:
            raise click.BadParameter(f"model {name!r}: {err}", param_hint=f"--{err.setting.replace('_', '-')}") from None
    return models


__all__ = ["ServedModel", "load_models", "parse_model_option"]
