"""The training loop behind `dream train`: CLIP, then the prior, then each decoder unet.

The run folder (`run_dir.py`) is a model folder that `dream --model RUN_DIR` samples from, plus
`training/` (resumable state per stage) and what the run measured (`metrics.jsonl`, `samples/`).
Progress goes to a caller-supplied `report(event, **info)` callback; nothing here prints. Under
`torchrun` every process trains on its share of each batch and only process 0 writes.

Events: `stage` (stage, start, total), `step` (stage, step, total, loss, lr, grad_norm,
images_per_s, seconds), `sample` (stage, step, path), `saved` (stage, step, path), `note` (stage,
message: how a resumed stage differs from an uninterrupted one), `done` (path, skipped).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from dalle2_core.data.batch import Batch, DataError
from dalle2_core.helpers import exists
from dalle2_core.train import distributed
from dalle2_core.train.feed import micro_batches, open_data
from dalle2_core.train.metrics import Metrics
from dalle2_core.train.models import Models, build_models
from dalle2_core.train.run_dir import RunDir
from dalle2_core.train.settings import OpenClip, TrainingError, TrainSettings
from dalle2_core.train.stages import Stage, build_stages, plan

Reporter = Callable[..., None]
# what a resumed stage is compared on: a difference changes the batches it sees from then on
_ORDER_SETTINGS = ("data", "embeddings", "batch_size", "grad_accum", "seed", "world_size", "num_workers", "shuffle_buffer")

__all__ = ["OpenClip", "TrainSettings", "TrainingError", "train"]


def _silent(event: str, **info) -> None:
    pass


def train(settings: TrainSettings, report: Reporter = _silent) -> Path:
    """Run the stages `settings` asks for into `settings.out`; returns the model folder."""
    rank, world = distributed.rank_world()
    settings.check(world)
    run = RunDir(settings.out)
    settings = replace(settings, resume=run.check(settings.resume))
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)  # the same initial weights on every process
    models = build_models(settings, run, device)
    names = plan(settings, models)
    data = open_data(settings, models.architecture["image_size"], _clip_width(models), prior="prior" in names,
                     text_needed=models.prior.config.condition_on_text_encodings)
    skipped = dict(data.skipped)
    new = rank == 0 and not settings.resume and not run.metrics.is_file()  # not a restart of a killed run
    with run.removed_on_failure(new):
        if rank == 0:
            run.remove_temporaries()  # left by a process killed while saving
        distributed.barrier()
        torch.manual_seed(settings.seed + rank)  # each process draws its own noise
        metrics = Metrics(run.root, enabled=rank == 0)
        try:
            for stage in build_stages(names, settings, models, data, run, device):
                _train_stage(stage, settings, run, models, data.image_size, metrics, skipped, report)
        except DataError as err:
            raise TrainingError(str(err), setting="data") from None
        finally:
            metrics.close()
    report("done", path=str(run.root), skipped=_count_skipped(skipped))
    return run.root


def _clip_width(models: Models) -> int:
    from dalle2_core.clip import as_clip_adapter

    return as_clip_adapter(models.clip).dim_latent


def _train_stage(stage: Stage, settings: TrainSettings, run: RunDir, models: Models, image_size: int, metrics: Metrics,
                 skipped: dict, report: Reporter) -> None:
    """Steps `stage` from its saved step to `settings.steps`, saving every `save_every` steps."""
    start, read = _resume(stage, settings, run, report)
    report("stage", stage=stage.name, start=start, total=settings.steps)
    if start >= settings.steps:
        stage.save()  # a run killed after its last state but before its model folder: write it now
        return
    batches = micro_batches(stage.source, settings, read, image_size)
    preview, clock, began = None, time.perf_counter(), time.perf_counter()
    world = distributed.rank_world()[1]
    for step in range(start, settings.steps):
        images = 0
        for _ in range(settings.grad_accum):
            batch, read = _next_batch(batches, read, skipped)
            preview = preview or batch
            stage.loss(batch).backward()
            _check_finite(stage.trainer.last_loss, stage.name, step)
            stage.update()
            images += len(batch)
        done, now = step + 1, time.perf_counter()
        row = dict(step=done, stage=stage.name, loss=stage.trainer.last_loss.item(), lr=stage.trainer.last_lr(),
                   grad_norm=stage.trainer.last_grad_norm, images_per_s=images * world / (now - clock), seconds=now - began)
        clock = now
        metrics.log(**row)
        report("step", total=settings.steps, **row)
        if exists(stage.sample) and settings.sample_every and done % settings.sample_every == 0:
            path = stage.sample(preview, done)
            if exists(path):
                report("sample", stage=stage.name, step=done, path=str(path))
        if done % settings.save_every == 0 or done == settings.steps:
            _checkpoint(stage, done, read, settings, run, models, report)


def _next_batch(batches: Iterator[Batch], read: int, skipped: dict) -> tuple[Batch, int]:
    """The next micro-batch that no process found empty (all its samples unusable), and the count read."""
    while True:
        batch = next(batches)
        read += 1
        skipped.update({skip.source: skip.reason for skip in batch.skipped})
        if not distributed.any_process(len(batch) == 0):
            return batch, read


def _check_finite(loss: torch.Tensor, stage: str, step: int) -> None:
    if distributed.any_process(not torch.isfinite(loss).item()):
        value = loss.item() if not torch.isfinite(loss) else "non-finite on another process"
        raise TrainingError(f"{stage} loss became {value} at step {step}; stopped without overwriting the last good checkpoint")


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _used(settings: TrainSettings) -> dict:
    """The settings a stage was trained with (settings.json records them with each checkpoint)."""
    names = ("data", "embeddings", "steps", "batch_size", "grad_accum", "lr", "lr_decay", "precision", "seed", "save_every",
             "num_workers", "shuffle_buffer", "compile", "fsdp")
    used = {name: getattr(settings, name) for name in names}
    return {**{k: str(v) if isinstance(v, Path) else v for k, v in used.items()}, "world_size": distributed.rank_world()[1]}


def _resume(stage: Stage, settings: TrainSettings, run: RunDir, report: Reporter) -> tuple[int, int]:
    """(step, micro-batches read) the stage stopped at, its trainer and random state restored."""
    state = run.load_state(stage.name) if settings.resume else None
    if state is None:
        return 0, 0
    stage.trainer.load_training_state(state["trainer"])
    rank, world = distributed.rank_world()
    if len(state["rng"]) == world:
        _restore_rng(state["rng"][rank])
    before = ((run.stored() or {}).get("stages") or {}).get(stage.name, {})
    now = _used(settings)
    changed = [f"{k} {before[k]} -> {now[k]}" for k in _ORDER_SETTINGS if k in before and before[k] != now[k]]
    if changed:
        report("note", stage=stage.name, message=f"resumed with {', '.join(changed)}: the batches and noise from step "
                                                 f"{state['step']} on differ from those of an uninterrupted run")
    return state["step"], state.get("batches", state["step"])


def _checkpoint(stage: Stage, step: int, read: int, settings: TrainSettings, run: RunDir, models: Models, report: Reporter):
    """settings.json, the state (it holds the weights: a run killed after it resumes from it), then the model."""
    state = stage.trainer.training_state()  # every process: sharded state is gathered
    rngs = distributed.gather_objects(_rng_state())
    if distributed.rank_world()[0] == 0:
        run.record(models.architecture, stage.name, _used(settings))
        run.save_state(stage.name, {"step": step, "batches": read, "trainer": state, "rng": rngs})
    stage.save()
    run.saved = True
    distributed.barrier()
    report("saved", stage=stage.name, step=step, path=str(run.root))


def _count_skipped(skipped: dict) -> dict:
    merged = {}
    for part in distributed.gather_objects(skipped):
        merged.update(part)
    return dict(Counter(reason.split(":")[0] for reason in merged.values()))
