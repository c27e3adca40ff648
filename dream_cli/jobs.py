"""What one `dream` run generates: one prompt from the command line, many from `--prompts FILE`, or the settings
stored in an image (`--from IMG.png`); and which of them this process takes under `torchrun`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import click

# per-prompt options a JSON line of --prompts may set (the same names as the command's options)
JOB_OPTIONS = ("seed", "num", "negative_prompt", "steps", "cond_scale", "prior_steps", "prior_cond_scale", "prior_samples",
               "sampler")
# option -> the field of the `dream-dalle2` settings chunk that holds it
STORED = {"seed": "seed", "negative_prompt": "negative_prompt", "steps": "steps", "cond_scale": "cond_scale",
          "prior_steps": "prior_steps", "prior_cond_scale": "prior_cond_scale", "prior_samples": "prior_samples",
          "sampler": "sampler", "precision": "precision"}


@dataclass
class Job:
    """One prompt and how many images of it, with options that override the command line's."""

    prompt: str
    options: dict = field(default_factory=dict)
    line: int | None = None  # where it came from in a --prompts file


def read_prompts(path: Path) -> list[Job]:
    """A prompts file: one prompt a line, or JSON objects {"prompt": ..., "seed": ..., ...} a line; blank lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise click.BadParameter(f"cannot read {str(path)!r}: {getattr(err, 'strerror', None) or err}", param_hint="--prompts") from None
    jobs = [_job(text.strip(), n, path) for n, text in enumerate(lines, start=1) if text.strip()]
    if not jobs:
        raise click.BadParameter(f"{str(path)!r} holds no prompt (one a line, or JSON lines with a \"prompt\")", param_hint="--prompts")
    return jobs


def _job(text: str, n: int, path: Path) -> Job:
    if not text.startswith("{"):
        return Job(text, line=n)
    where = f"{path.name} line {n}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"{where} is not valid JSON ({err.msg})", param_hint="--prompts") from None
    prompt = row.pop("prompt", None) if isinstance(row, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise click.BadParameter(f"{where} needs a non-empty \"prompt\" string", param_hint="--prompts")
    unknown = sorted(set(row) - set(JOB_OPTIONS))
    if unknown:
        raise click.BadParameter(f"{where} has unknown option(s) {', '.join(unknown)}; accepted: prompt, {', '.join(JOB_OPTIONS)}",
                                 param_hint="--prompts")
    for name in ("seed", "num", "prior_steps", "prior_samples"):
        if name in row and (not isinstance(row[name], int) or isinstance(row[name], bool) or row[name] < (0 if name == "seed" else 1)):
            raise click.BadParameter(f"{where}: {name} {row[name]!r} must be an integer >= {0 if name == 'seed' else 1}",
                                     param_hint="--prompts")
    for name in ("steps", "cond_scale"):
        if isinstance(row.get(name), list):
            row[name] = tuple(row[name])
    return Job(prompt, row, line=n)


def stored_run(path: Path) -> tuple[Job, dict]:
    """The prompt and the options an image was made with (`--from IMG.png`): (job, command-line option values)."""
    from dream_cli.output import read_settings

    stored = read_settings(path, option="--from")
    prompt = stored.get("prompt")
    if not isinstance(prompt, str):
        raise click.BadParameter(f"{str(path)!r} stores no prompt", param_hint="--from")
    options = {option: stored[key] for option, key in STORED.items() if stored.get(key) is not None}
    for name in ("steps", "cond_scale"):
        if isinstance(options.get(name), list):
            options[name] = tuple(options[name])
    spec = {"local": stored.get("model_path"), "hub": f"{str(stored.get('model', '')).split('@')[0]}@{stored.get('model_revision')}"}
    options["model_spec"] = spec.get(stored.get("model_source")) or stored.get("model")
    for key in ("image", "init_image", "mask"):
        if stored.get(key):
            options[key] = Path(stored[key])
    for key in ("strength", "outpaint"):
        if stored.get(key) is not None and stored.get("init_image"):
            options[key] = stored[key]
    return Job(prompt), options


def rank_share(jobs: list[Job]) -> tuple[list[tuple[int, Job]], int, int]:
    """(index, job) pairs this process takes under torchrun (every WORLD_SIZE-th from RANK), rank, world size."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return [(i, job) for i, job in enumerate(jobs) if i % world == rank], rank, world


__all__ = ["JOB_OPTIONS", "Job", "rank_share", "read_prompts", "stored_run"]
