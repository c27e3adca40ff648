"""What every sampling command shares: options, device and precision, loading the pipeline, settings, progress."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click

from dalle2_core.choices import DEFAULT_MODEL, PRECISIONS, PRESETS, SAMPLER_NAMES, SPACINGS
from dream_cli.errors import DreamError, one_line

if TYPE_CHECKING:
    import torch


# torch is imported inside the functions that need it: `dream --help` and usage errors never load it
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_SEED = 2**63 - 1
# a setting of `SamplingSettings` -> the option that sets it
SETTING_OPTIONS = {
    "steps": "--steps", "cond_scale": "--cond-scale", "prior_steps": "--prior-steps",
    "prior_cond_scale": "--prior-cond-scale", "prior_samples": "--prior-samples", "sampler": "--sampler", "spacing": "--spacing",
    "size": "--size",
}
MAX_SIDE = 8192  # what --size reads at all; the model says which sizes it makes


class NumberList(click.ParamType):
    """One number or a comma-separated list (`3` or `3,1`): finite, >= `minimum` (and <= `maximum` when given)."""

    def __init__(self, kind: type = float, minimum: float = 0, single: bool = False, maximum: float | None = None):
        self.kind, self.minimum, self.maximum, self.single = kind, minimum, maximum, single
        what = "an integer" if kind is int else "a finite number"
        bound = f">= {minimum:g}" if maximum is None else f"from {minimum:g} to {maximum:g}"
        self.accepted = f"{what} {bound}" + ("" if single else ", or one per decoder stage separated by commas (3,1)")
        self.name = "N" if single else "N[,N...]"

    def _fits(self, number) -> bool:
        finite = number == number and number not in (float("inf"), float("-inf"))
        return finite and number >= self.minimum and (self.maximum is None or number <= self.maximum)

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, int, float)) and not isinstance(value, bool):  # a default, or a value already converted
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if self.single and len(parts) != 1:
            self.fail(f"{value!r}: expected {self.accepted}", param, ctx)
        numbers = []
        for part in parts:
            try:
                number = self.kind(part)
            except ValueError:
                self.fail(f"{value!r}: expected {self.accepted}", param, ctx)
            if not self._fits(number):
                self.fail(f"{value!r}: expected {self.accepted}", param, ctx)
            numbers.append(number)
        return numbers[0] if self.single else tuple(numbers)


class ImageSize(click.ParamType):
    """WIDTHxHEIGHT (`768x512`) as (width, height); an image's stored [width, height] too. The model checks the size."""

    name = "WxH"
    list_joiner = "x"  # a stored [width, height] as the option's text

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):  # a default, or a value already converted
            return value
        width, sep, height = str(value).strip().lower().partition("x")
        if sep and width.isdigit() and height.isdigit() and 1 <= int(width) <= MAX_SIDE and 1 <= int(height) <= MAX_SIDE:
            return int(width), int(height)
        self.fail(f"{value!r}: expected WIDTHxHEIGHT in pixels, such as 768x512", param, ctx)


def sampling_options(*, model_default: str | None = None, seed_default: int | None = None):
    """The options of every sampling command (`dream PROMPT`, `interpolate`, `eval shapes`)."""
    model_help = ("Model folder, Hugging Face repo org/name[@revision], 'shapes' (bundled, offline), or a preset: "
                  f"{', '.join(PRESETS)}." + (" [env DREAM_MODEL]" if model_default is None else ""))
    seed_help = "Random seed (random if omitted); image i uses seed + i." if seed_default is None else \
        "Chooses the prompts and the noise; the same seed gives the same figures."
    options = [
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=seed_default, show_default=seed_default is not None,
                     help=seed_help),
        click.option("--cond-scale", type=NumberList(float), help="Decoder guidance: one value or one per stage (3,1). [model default]"),
        click.option("--prior-cond-scale", type=NumberList(float, single=True), help="Prior guidance. [model default]"),
        click.option("--prior-samples", type=click.IntRange(min=1),
                     help="Prior candidates per image; the most text-like is kept. [model default]"),
        click.option("--steps", type=NumberList(int, minimum=1),
                     help="Decoder sampling steps: one value or one per stage. [model default]"),
        click.option("--prior-steps", type=click.IntRange(min=1), help="Prior sampling steps. [model default]"),
        click.option("--sampler", type=click.Choice(list(SAMPLER_NAMES)), help="Sampler, for every stage. [model default]"),
        click.option("--spacing", type=click.Choice(list(SPACINGS)),
                     help="Which timesteps the steps visit, for every stage: uniform, leading, trailing or karras. [each stage's own]"),
        click.option("--size", type=ImageSize(), metavar="WxH",
                     help="Image size WIDTHxHEIGHT, one the model makes (kandinsky: multiples of 64 from 256 to 1024 a side; "
                          "karlo: 256x256). [model default]"),
        click.option("--fast", is_flag=True,
                     help="Start from the model's recorded fast settings (fewer network calls) instead of its defaults; "
                          "the options above still override them."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Where to sample."),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
                     help="Weights and activations (fp16 needs an accelerator)."),
        click.option("--model", "model_spec", envvar=None if model_default else "DREAM_MODEL",
                     default=model_default or DEFAULT_MODEL, show_default=True, help=model_help),
        click.option("--offload", is_flag=True,
                     help="Keep the networks on the CPU and move each to --device only while it runs (big models, small GPUs)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress or info lines (result paths are still printed)."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# --- where and how to run ----------------------------------------------------------------------------


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """`auto` is cuda, then mps, then cpu; asking for an absent accelerator is a usage error."""
    import torch

    available = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if _mps_available() else [])
    if name == "auto":
        name = "cuda" if "cuda" in available else "mps" if "mps" in available else "cpu"
    if name not in available:
        raise click.BadParameter(
            f"{name} is not available on this machine (torch sees no {name} device); accepted here: {', '.join(available)}",
            param_hint="--device",
        )
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    import torch

    dtype = getattr(torch, {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision])
    if dtype == torch.float16 and device.type == "cpu":
        raise click.BadParameter("fp16 is not supported on cpu; accepted on cpu: fp32, bf16", param_hint="--precision")
    return dtype


def check_outdir(outdir: Path, option: str = "--outdir") -> Path:
    """Create `outdir` if needed and prove it is writable before any sampling starts."""
    outdir = Path(outdir).expanduser()
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as err:
        reason = err.strerror or one_line(err)
        raise DreamError(f"cannot write to {option} {str(outdir)!r}: {reason}") from None
    return outdir


def first_seed(seed: int | None, count: int) -> int:
    """The given seed, else a random one; seed + count - 1 must still be a valid seed."""
    import secrets

    seed = seed if seed is not None else secrets.randbelow(2**32)
    if seed + count - 1 > MAX_SEED:
        raise click.BadParameter(f"{seed} + {count} images exceeds the largest seed {MAX_SEED}", param_hint="--seed")
    return seed


def per_image_generators(first: int, count: int, device) -> list[torch.Generator]:
    """One generator per image, seeded first, first + 1, ...: an image's noise does not depend on its batch."""
    import torch

    return [torch.Generator(device=device).manual_seed(first + j) for j in range(count)]


# --- the model ---------------------------------------------------------------------------------------


def load(spec: str, device: torch.device, dtype: torch.dtype, quiet: bool, offload: bool = False, pictures: bool = False,
         inpainting: bool = False):
    """(pipeline, resolved model) for a `--model` value; every load failure is one line, exit 1. `pictures`: the run
    embeds pictures (a Karlo model then fetches its CLIP vision tower on first use); `inpainting`: it inpaints (the
    Kandinsky preset then fetches its inpainting U-Net on first use)."""
    from dalle2_core.checkpoint import ModelLoadError
    from dalle2_core.hub import resolve_model
    from dalle2_core.pipeline import load_pipeline

    try:
        resolved = resolve_model(spec, progress=not quiet, pictures=pictures, inpainting=inpainting)
        pipeline = load_pipeline(resolved.path, device="cpu" if offload else device, dtype=dtype)
        if offload:
            pipeline.offload(device)
    except ModelLoadError as err:
        raise DreamError(one_line(err) + _load_hint(err)) from None
    return pipeline, resolved


def _load_hint(err) -> str:
    """What the user can do about a load failure, in this command's options."""
    if getattr(err, "offline", False):
        return "; use --model shapes"
    if getattr(err, "diffusers_pair", False):  # a Kandinsky 2.2 prior and decoder, converted together
        pair = "; download the prior and decoder at other commits and convert" if getattr(err, "pinned_repo", None) else "; convert"
        return f"{pair} the pair with: dream convert diffusers PRIOR DECODER --out DIR"
    repo, filename = getattr(err, "pinned_repo", None), getattr(err, "pinned_file", None)
    if repo and filename:
        return f"; download {filename} of {repo} at another commit yourself and convert it with `dream convert laion`"
    if repo:
        return f"; choose another commit with --model {repo}@REVISION"
    return ""


def resolve_settings(pipeline, opts: dict, inpainting: bool = False):
    """The run's sampling settings: options given over the model's defaults (`--fast`: its fast settings); a misfit names
    its option."""
    from dalle2_core.pipeline import SettingError

    try:
        return pipeline.resolve(inpainting=inpainting, fast=opts.get("fast", False), **{k: opts[k] for k in SETTING_OPTIONS})
    except SettingError as err:
        raise click.BadParameter(str(err), param_hint={**SETTING_OPTIONS, "fast": "--fast"}.get(err.setting, "settings")) from None


@contextlib.contextmanager
def sampling_errors():
    """Library refusals while sampling (a setting this model can't take, a stage gone non-finite): one line, exit 1."""
    from dalle2_core.pipeline import NonFiniteOutputError

    try:
        yield
    except (ValueError, NonFiniteOutputError) as err:
        raise DreamError(one_line(err)) from None
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and not _is_out_of_memory(err):
            raise
        raise DreamError(f"ran out of memory while sampling ({one_line(err)[:80]}); lower --batch-size") from None


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


# --- progress and warnings ---------------------------------------------------------------------------


class Estimate(NamedTuple):
    """What the one line about a CPU run's length needs: the first decoder stage, and what would be faster."""

    stage: str  # the first decoder stage (its first step is timed)
    faster: str  # e.g. "--model karlo, or fewer --steps"
    threshold: float = 60.0  # seconds: a shorter run says nothing


def cpu_estimate(pipeline, device, quiet: bool) -> Estimate | None:
    """An `Estimate` for a run on the CPU (None on an accelerator, or quiet)."""
    if quiet or device.type != "cpu" or not pipeline.stage_names:
        return None
    faster = ("" if pipeline.family == "karlo" else "--model karlo, or ") + "fewer --steps"
    return Estimate(pipeline.stage_names[0], faster)


class Progress:
    """One bar per stage (prior, each decoder stage) on a terminal; one plain line per stage once all its runs are done
    otherwise; nothing when quiet. `runs` is how many times each stage will run. With an `estimate` (a run on the CPU),
    the first step of the first decoder stage is timed and one line says how long that stage will take and what is
    faster, before its second step (when it will take a minute or more)."""

    def __init__(self, quiet: bool, stages: list[tuple[str, int]], runs: dict[str, int], estimate: Estimate | None = None,
                 clock=time.perf_counter):
        self.bar, self.plain, self.tasks, self.runs = None, False, {}, dict(runs)
        self.estimate, self.clock, self.last = estimate, clock, clock()
        self.seconds: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.done: dict[str, int] = {}
        if quiet:
            return
        if not sys.stderr.isatty():
            self.plain = True
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.bar = RichProgress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True))
        self.tasks = {name: self.bar.add_task(name, total=steps * runs.get(name, 0)) for name, steps in stages if runs.get(name)}

    def __enter__(self) -> Progress:
        self.last = self.clock()
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, stage: str, i: int, total: int, x=None) -> None:
        now = self.clock()
        if self.estimate is not None and stage == self.estimate.stage and i == 0:
            self._say_estimate(now - self.last, total)
        self.last = now
        if self.bar is not None and stage in self.tasks:
            self.bar.advance(self.tasks[stage])
        elif self.plain:
            if i == 0:
                self.started[stage] = now
            if i == total - 1:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.started.pop(stage, now)
                self.done[stage] = done = self.done.get(stage, 0) + 1
                if done >= self.runs.get(stage, 1):  # the stage's last run (or one more than was announced)
                    runs = f"{done} x " if done > 1 else ""
                    click.echo(f"{stage}: {runs}{total} steps in {self.seconds.pop(stage):.1f} s", err=True)
                    self.done[stage] = 0

    def _say_estimate(self, step: float, total: int) -> None:
        """Once: how long the timed stage takes (its first step, which includes the run's one-off conditioning, times
        every step of every run of it) and what is faster."""
        estimate, self.estimate = self.estimate, None
        runs = max(1, self.runs.get(estimate.stage, 1))
        seconds = step * total * runs
        if seconds < estimate.threshold:
            return
        batches = f" x {runs} batches" if runs > 1 else ""
        line = (f"Note: on this CPU the {estimate.stage} takes {step:.1f} s a step: about {_duration(seconds)} for {total} steps"
                f"{batches}; faster: {estimate.faster}")
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            click.echo(line, err=True)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{max(1, round(minutes))} min"


def _relabelled(message: str, negative_prompts) -> str:
    """A prompt-truncation warning about a negative prompt says so (the library only sees text)."""
    if not message.startswith("prompt '") and not message.startswith('prompt "'):
        return message
    quote = message[7]
    shown = message[8:message.find(quote + " needs")] if quote + " needs" in message else None
    if shown is not None and any(n and (n == shown or (shown.endswith("...") and n.startswith(shown[:-3]))) for n in negative_prompts):
        return "negative " + message
    return message


@contextlib.contextmanager
def surface_warnings(everything: bool = False, negative_prompts=()):
    """Show dalle2_core's warnings (e.g. a prompt cut to the CLIP context) as one line each on stderr.

    Other libraries' warnings are shown only with `everything` (--debug). A warning about one of `negative_prompts`
    calls it a negative prompt.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            shown = set()
            for w in caught:
                message = _relabelled(one_line(w.message), [one_line(n) for n in negative_prompts if n])
                from_library = "dalle2_core" in str(w.filename) or type(w.message).__module__.startswith("dalle2_core")
                if (from_library or everything) and message not in shown:
                    shown.add(message)
                    click.echo(f"Warning: {message}", err=True)


class Run(NamedTuple):
    """What a sampling command's opening gives it: the loaded pipeline and the settings it resolved."""

    pipeline: object  # dalle2_core.pipeline.Pipeline
    resolved: object  # dalle2_core.hub.ResolvedModel
    settings: object  # dalle2_core.checkpoint.SamplingSettings
    device: object  # torch.device
    dtype: object  # torch.dtype
    outdir: Path | None
    seed: int
    quiet: bool


@contextlib.contextmanager
def opening(opts: dict, *, outdir: Path | None = None, outdir_option: str = "--outdir", images: int = 1,
            pictures: bool = False) -> Iterator[Run]:
    """The opening every sampling command shares: device and precision checked, the output folder checked, the seed
    of `images` images, warnings surfaced, the model loaded (with its vision tower when the run embeds `pictures`),
    the settings resolved, and the one info line. The body runs inside the warnings' scope."""
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["precision"], device)
    outdir = check_outdir(outdir, option=outdir_option) if outdir is not None else None
    seed = first_seed(opts["seed"], images)
    quiet = opts["quiet"]
    with surface_warnings(everything=opts["debug"]):
        pipeline, resolved = load(opts["model_spec"], device, dtype, quiet, opts["offload"], pictures=pictures)
        settings = resolve_settings(pipeline, opts)
        info_line(quiet, seed, resolved, device, opts["precision"])
        yield Run(pipeline, resolved, settings, device, dtype, outdir, seed, quiet)


def info_line(quiet: bool, seed: int, resolved, device, precision: str) -> None:
    if not quiet:
        click.echo(f"seed {seed}  model {resolved.spec}  device {device}  {precision}", err=True)
