"""`dream train --data FOLDER --out RUN_DIR`: train CLIP, the prior and the decoder unets on a folder."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dream_cli.errors import DreamError, one_line


class _RichReporter:
    """Turns the training loop's events into a progress bar per stage (rank 0 only)."""

    def __init__(self, console: Console, quiet: bool, active: bool = True):
        self.console, self.quiet, self.active = console, quiet or not active, active
        self.progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=console,
            disable=self.quiet,
        )
        self.task = None
        self.stage_start = None

    def __call__(self, event: str, **info) -> None:
        if not self.active:
            return
        if event == "stage":
            if self.task is not None:
                self.progress.stop_task(self.task)
            self.task = self.progress.add_task(info["stage"], total=info["total"], completed=info["start"], status="")
        elif event == "step":
            self.progress.update(self.task, completed=info["step"])
            task = self.progress.tasks[self.task]
            status = f"loss {info['loss']:.4f}  " if "loss" in info else ""
            self.progress.update(self.task, status=f"{status}{task.speed or 0:.2f} steps/s")
        elif event == "sample" and not self.quiet:
            self.progress.console.print(f"samples: {info['path']}")
        elif event == "done":
            skipped = info.get("skipped") or {}
            if skipped:
                counts = ", ".join(f"{n} {why}" for why, n in skipped.items())
                self.console.print(f"skipped examples: {counts}")
            self.console.print(f"model: {info['path']}  (sample with: dream --model {info['path']} 'a prompt')")


@click.command("train")
@click.option("--data", "data", type=click.Path(path_type=Path), required=True,
              help="Folder of images with captions (.txt sidecars or metadata.jsonl).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Run folder; becomes a model folder for `dream --model`.")
@click.option("--stage", type=click.Choice(["all", "clip", "prior", "decoder"]), default="all", show_default=True)
@click.option("--unet", type=click.IntRange(min=1), default=None, help="Train only this decoder unet (1 = base).")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps per stage (per unet).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Global batch size (split across processes).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True, max=1e-2), default=None, help="Learning rate (default 3e-4).")
@click.option("--lr-decay", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="cosine: decay the learning rate to 0 at --steps.")
@click.option("--image-size", type=click.IntRange(min=16, max=1024), default=64, show_default=True,
              help="Output image size; sets the cascade and model sizes.")
@click.option("--save-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--sample-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Write a decoder sample grid every N steps (0: never).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--clip", "clip", default=None, metavar="open_clip:ARCH/PRETRAINED",
              help="Use a pretrained, frozen open_clip model instead of training a CLIP.")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="JSON overriding model sizes (sections clip, prior_network, prior, unets, decoder).")
@click.option("--compile", "compile", flag_value="inductor", default=None,
              help="torch.compile the network being trained (first step compiles: minutes on a CPU).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data loading processes.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def train(quiet: bool, debug: bool, device: str, **options) -> None:
    """Train a model on a folder of captioned images."""
    import torch

    from dalle2_core.train.loop import TrainingError, TrainSettings, init_distributed, train as run_training

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA was asked for but no CUDA device is available; accepted here: cpu", param_hint="--device")
    if init_distributed(device) and device == "cuda":
        device = f"cuda:{torch.distributed.get_rank() % torch.cuda.device_count()}"
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    console = Console(stderr=True)
    reporter = _RichReporter(console, quiet, active=rank == 0)
    settings = TrainSettings(device=device, **options)
    try:
        with reporter.progress:
            run_training(settings, reporter)
    except (TrainingError, ValueError) as err:
        raise DreamError(one_line(err)) from err
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
