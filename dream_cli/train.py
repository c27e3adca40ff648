"""`dream train --data DATA --out RUN_DIR`: train CLIP, the prior and the decoder unets (parses options, calls dalle2_core)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dream_cli.errors import DreamError, one_line

if TYPE_CHECKING:
    from rich.console import Console

# settings whose option is not "--" + the name with dashes
_FLAGS = {"num_workers": "--workers"}
# advice for the library's errors that a flag fixes
_HINTS = {
    "out_not_empty": "pass --resume to continue that run, or choose another --out",
    "no_run": "start it without --resume",
}


def _flag(setting: str) -> str:
    return _FLAGS.get(setting, "--" + setting.replace("_", "-"))


def _cli_error(err) -> click.ClickException:
    """A `TrainingError` in terms of this command's options: usage errors exit 2, the rest 1."""
    message = one_line(err)
    if err.code in _HINTS:
        message = f"{message}; {_HINTS[err.code]}"
    if err.usage and err.setting:
        return click.BadParameter(message, param_hint=f"'{_flag(err.setting)}'")
    return DreamError(message)


def _step_text(info: dict) -> str:
    parts = [f"loss {info['loss']:.4f}", f"lr {info['lr']:.2e}"]
    if info.get("grad_norm") is not None:
        parts.append(f"grad {info['grad_norm']:.3f}")
    return "  ".join(parts + [f"{info['images_per_s']:.1f} img/s"])


class _Reporter:
    """Turns the training loop's events into progress (process 0 only): a bar per stage on a terminal,
    otherwise a plain line per stage, per checkpoint and at most every `every` seconds per step."""

    def __init__(self, console: Console, quiet: bool, active: bool = True, every: float = 10.0):
        self.console, self.active, self.every = console, active, every
        self.quiet = quiet or not active
        self.bars = console.is_terminal
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(), console=console, disable=self.quiet or not self.bars,
        )
        self.task = None
        self.last_line = 0.0

    def line(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(text, highlight=False, soft_wrap=True)

    def __call__(self, event: str, **info) -> None:
        if not self.active:
            return
        if event == "stage":
            self._stage(info)
        elif event == "step":
            self._step(info)
        elif event in ("sample", "saved"):
            if not self.bars:
                self.line(f"{info['stage']} step {info['step']}: {'samples' if event == 'sample' else 'saved'} {info['path']}")
            elif event == "sample":
                self.line(f"samples: {info['path']}")
        elif event == "note":
            self.line(f"{info['stage']}: {info['message']}")
        elif event == "done":
            self._done(info)

    def _stage(self, info: dict) -> None:
        if self.task is not None:
            self.progress.stop_task(self.task)
        self.task = self.progress.add_task(info["stage"], total=info["total"], completed=info["start"], status="")
        if not self.bars:
            self.line(f"{info['stage']}: steps {info['start']} -> {info['total']}")

    def _step(self, info: dict) -> None:
        self.progress.update(self.task, completed=info["step"], status=_step_text(info))
        now = time.monotonic()
        if not self.bars and (now - self.last_line >= self.every or info["step"] == info["total"]):
            self.last_line = now
            self.line(f"{info['stage']} step {info['step']}/{info['total']}  {_step_text(info)}")

    def _done(self, info: dict) -> None:
        skipped = info.get("skipped") or {}
        if skipped:
            self.console.print("skipped examples: " + ", ".join(f"{n} {why}" for why, n in skipped.items()), soft_wrap=True)
        # one unwrapped line: paths must stay copyable
        self.console.print(f"model: {info['path']}  (sample with: dream --model {info['path']} 'a prompt')", soft_wrap=True,
                           highlight=False)


def _parse_clip(ctx, param, value):
    from dalle2_core.train.settings import OpenClip

    if value is None:
        return None
    arch, _, pretrained = value.removeprefix("open_clip:").partition("/")
    if not value.startswith("open_clip:") or not arch:
        raise click.BadParameter(f"{value!r} is not understood; accepted: open_clip:ARCH or open_clip:ARCH/PRETRAINED")
    return OpenClip(arch, pretrained or None)


@click.command("train")
@click.option("--data", "data", default=None, metavar="FOLDER|SHARDS",
              help="Image folder (captions as .txt sidecars or metadata.jsonl; img2dataset's 'files' layout) or webdataset "
                   "shards: 'shards/{00000..00999}.tar', 'pipe:curl -s URL/{00000..00999}.tar'.")
@click.option("--embeddings", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="clip-retrieval embedding folder (img_emb/, text_emb/, metadata/): the prior trains on it alone, "
                   "the decoder takes its image embeddings instead of running CLIP.")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Run folder; becomes a model folder for `dream --model`.")
@click.option("--stage", type=click.Choice(["all", "clip", "prior", "decoder"]), default="all", show_default=True,
              help="What to train: everything in order, or one stage (add stages to a run with --resume).")
@click.option("--unet", type=click.IntRange(min=1), default=None, help="Train only this decoder unet (1 = base).")
@click.option("--init", "init", default=None, metavar="MODEL",
              help="Start from this model's weights (a model folder, a Hub repo org/name, or 'shapes'): fine-tuning.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps per stage (per unet).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Examples per optimizer step, over all processes and --grad-accum micro-batches.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split each step's batch into this many micro-batches (less memory, same result).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True, max=1e-2), default=None, help="Learning rate (default 3e-4).")
@click.option("--lr-decay", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="cosine: decay the learning rate to 0 at --steps.")
@click.option("--image-size", type=click.IntRange(min=16, max=1024), default=None,
              help="Output image size; sets the cascade and model sizes (default 64; a resumed run keeps its own).")
@click.option("--save-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Write the model and the resumable state every N steps (and at the last).")
@click.option("--sample-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Write a decoder sample grid every N steps (0: never).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA only).")
@click.option("--clip", "clip", default=None, metavar="open_clip:ARCH[/PRETRAINED]", callback=_parse_clip,
              help="Use a frozen open_clip model instead of training a CLIP (no /PRETRAINED: random weights).")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="JSON overriding model sizes (sections clip, prior_network, prior, unets, decoder).")
@click.option("--compile", "compile", flag_value="inductor", default=None,
              help="torch.compile the network being trained (first step compiles: minutes on a CPU).")
@click.option("--fsdp", is_flag=True,
              help="Shard the prior network or decoder unet being trained, and its optimizer state, across processes (FSDP2).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial weights, the data order and the noise.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
              help="auto: CUDA when available (under torchrun: the GPU of LOCAL_RANK), else CPU.")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data loading processes.")
@click.option("--shuffle-buffer", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples a shard stream mixes before yielding one.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def train(quiet: bool, debug: bool, device: str, **options) -> None:
    """Train a model on captioned images: a folder, webdataset shards, or precomputed embeddings."""
    import torch

    from dalle2_core.checkpoint import ModelLoadError
    from dalle2_core.train import distributed
    from dalle2_core.train.loop import TrainingError, TrainSettings, train as run_training

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA was asked for but no CUDA device is available; accepted here: cpu", param_hint="'--device'")
    try:
        device = distributed.init(device)
        from rich.console import Console

        console = Console(stderr=True)
        reporter = _Reporter(console, quiet, active=distributed.rank_world()[0] == 0)
        with reporter.progress:
            run_training(TrainSettings(device=device, **options), reporter)
    except TrainingError as err:
        raise _cli_error(err) from err
    except (ValueError, ModelLoadError) as err:
        raise DreamError(one_line(err)) from err
    finally:
        distributed.close()
