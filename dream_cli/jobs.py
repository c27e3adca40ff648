"""What one `dream` run generates: one prompt from the command line, many from `--prompts FILE`, or the settings
stored in an image (`--from IMG.png`); and which of them this process takes under `torchrun`.

A value from a JSON prompt line or from an image's stored settings goes through the same checks as the option of
that name on the command line (`checked`), before any model is loaded.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

# per-prompt options a JSON line of --prompts may set (the same names as the command's options)
JOB_OPTIONS = ("seed", "num", "negative_prompt", "steps", "cond_scale", "prior_steps", "prior_cond_scale", "prior_samples",
               "sampler", "spacing", "size")
# option -> the field of the `dream-dalle2` settings chunk that holds it
STORED = {"seed": "seed", "negative_prompt": "negative_prompt", "steps": "steps", "cond_scale": "cond_scale",
          "prior_steps": "prior_steps", "prior_cond_scale": "prior_cond_scale", "prior_samples": "prior_samples",
          "sampler": "sampler", "spacing": "spacing", "precision": "precision", "size": "size"}
EDIT_STORED = ("strength", "outpaint")  # read only with the init_image they edit


@dataclass
class Job:
    """One prompt and how many images of it, with options that override the command line's."""

    prompt: str
    options: dict = field(default_factory=dict)
    line: str | None = None  # where it came from in a --prompts file ("prompts.txt line 3")


def read_prompts(path: Path, ctx: click.Context) -> list[Job]:
    """A prompts file (`-`: standard input): one prompt a line, or JSON objects {"prompt": ..., "seed": ..., ...} a line;
    blank lines skipped, a UTF-8 byte order mark ignored."""
    stdin = str(path) == "-"
    try:
        text = sys.stdin.read() if stdin else path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise click.BadParameter(f"cannot read {str(path)!r}: {getattr(err, 'strerror', None) or err}", param_hint="--prompts") from None
    name = "standard input" if stdin else path.name
    lines = text.removeprefix("\ufeff").splitlines()
    jobs = [_job(line.strip(), f"{name} line {n}", ctx) for n, line in enumerate(lines, start=1) if line.strip()]
    if not jobs:
        raise click.BadParameter(f"{str(path)!r} holds no prompt (one a line, or JSON lines with a \"prompt\")", param_hint="--prompts")
    return jobs


def _job(text: str, where: str, ctx: click.Context) -> Job:
    if not text.startswith(("{", "[")):
        return Job(text, line=where)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"{where} starts with {text[0]!r} but is not valid JSON ({err.msg}); a prompt that starts so "
                                 'goes in a JSON line: {"prompt": ...}', param_hint="--prompts") from None
    if not isinstance(row, dict):
        kind = "array" if isinstance(row, list) else type(row).__name__
        raise click.BadParameter(f'{where} is a JSON {kind}; a JSON line is an object {{"prompt": ..., "seed": ...}}',
                                 param_hint="--prompts")
    prompt = row.pop("prompt", None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise click.BadParameter(f"{where} needs a non-empty \"prompt\" string", param_hint="--prompts")
    unknown = sorted(set(row) - set(JOB_OPTIONS))
    if unknown:
        raise click.BadParameter(f"{where} has unknown option(s) {', '.join(unknown)}; accepted: prompt, {', '.join(JOB_OPTIONS)}",
                                 param_hint="--prompts")
    return Job(prompt, {name: checked(ctx, name, value, where, "--prompts") for name, value in row.items()}, line=where)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_argument(name: str, value, param: click.Parameter) -> str:
    """A JSON value as the command-line text of its option; a value of the wrong JSON type is refused."""
    kind = param.type
    joiner = getattr(kind, "list_joiner", None)  # a WIDTHxHEIGHT option from [width, height]
    if joiner and isinstance(value, list) and value and all(map(_is_number, value)):
        return joiner.join(map(str, value))
    if getattr(kind, "single", True) is False:  # NumberList of one value per stage: N or [N, ...]
        if _is_number(value) or (isinstance(value, list) and value and all(map(_is_number, value))):
            return ",".join(map(str, value if isinstance(value, list) else [value]))
        raise click.BadParameter(f"{name} {value!r} must be a number or a list of numbers")
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)) or hasattr(kind, "single"):
        if _is_number(value):
            return str(value)
        raise click.BadParameter(f"{name} {value!r} must be a number")
    if isinstance(value, str):
        return value
    raise click.BadParameter(f"{name} {value!r} must be a string")


def checked(ctx: click.Context, name: str, value, where: str, option: str):
    """`value` (from a JSON line or an image's settings) through the checks of the option `name` on the command line."""
    param = next(p for p in ctx.command.params if p.name == name)
    try:
        return param.type.convert(_as_argument(name, value, param), param, ctx)
    except click.BadParameter as err:
        message = err.message if err.message.startswith(f"{name} ") else f"{name} {err.message}"
        raise click.BadParameter(f"{where}: {message}", param_hint=option) from None


def stored_run(path: Path, ctx: click.Context) -> tuple[Job, dict, str | None]:
    """The prompt and the options an image was made with (`--from IMG.png`), each checked as its option is:
    (job, option values, the folder name of a local model that the image names but that cannot be located)."""
    from dream_cli.output import read_settings

    stored = read_settings(path, option="--from")
    where = repr(str(path))
    prompt = stored.get("prompt")
    if not isinstance(prompt, str):
        raise click.BadParameter(f"{where} stores no prompt", param_hint="--from")
    keys = dict(STORED)
    if stored.get("grid"):
        del keys["size"]  # a grid's size is the grid's, not its images'
    if stored.get("init_image"):
        keys.update({key: key for key in EDIT_STORED})
    keys.update({key: key for key in ("image", "init_image", "mask") if stored.get(key)})
    options = {option: checked(ctx, option, stored[key], where, "--from") for option, key in keys.items()
               if stored.get(key) is not None}
    local = None
    source, model = stored.get("model_source"), stored.get("model")
    if source == "hub" and isinstance(model, str):
        options["model_spec"] = checked(ctx, "model_spec", f"{model.split('@')[0]}@{stored.get('model_revision')}", where, "--from")
    elif source == "local":  # recorded by its folder name only (images of older versions: by path)
        if isinstance(stored.get("model_path"), str):
            options["model_spec"] = stored["model_path"]
        else:
            local = str(model)
    elif model is not None:
        options["model_spec"] = checked(ctx, "model_spec", model, where, "--from")
    return Job(prompt), options, local


def rank_share(jobs: list[Job]) -> tuple[list[tuple[int, Job]], int, int]:
    """(index, job) pairs this process takes under torchrun (every WORLD_SIZE-th from RANK), rank, world size."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return [(i, job) for i, job in enumerate(jobs) if i % world == rank], rank, world


__all__ = ["JOB_OPTIONS", "Job", "checked", "rank_share", "read_prompts", "stored_run"]
