"""The stages of a run (CLIP, the prior, each decoder unet): what each trains, its loss on a batch,
how it saves its model and draws samples. The loop (`loop.py`) steps them all the same way."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dalle2_core import checkpoint
from dalle2_core.atomic import atomic_path
from dalle2_core.data.batch import Batch
from dalle2_core.helpers import exists
from dalle2_core.train import distributed
from dalle2_core.train.feed import Data
from dalle2_core.train.models import Models
from dalle2_core.train.run_dir import RunDir
from dalle2_core.train.settings import TrainingError, TrainSettings
from dalle2_core.train.trainers import CLIPTrainer, DecoderTrainer, DiffusionPriorTrainer

# the EMA used for the prior and the decoder unets of a run
EMA_OPTIONS = dict(ema_beta=0.995, ema_update_after_step=100, ema_update_every=1)


@dataclass
class Stage:
    name: str  # "clip", "prior", "decoder-unet2": also the name of its state file
    trainer: torch.nn.Module
    source: object  # what `feed.micro_batches` reads: a folder, an embedding folder, shard URLs
    loss: Callable[[Batch], torch.Tensor]
    update: Callable[[], bool]
    save: Callable[[], None]  # the model folder; every process calls it
    sample: Callable[[Batch, int], Path | None] | None = None  # every process calls it


def plan(settings: TrainSettings, models: Models) -> list[str]:
    """The names of the stages to train, in order; refuses a unet or stage the models do not have."""
    names = list(settings.stages_asked())
    if not models.clip_trainable:
        if settings.stage == "clip":
            raise TrainingError(f"the clip stage trains the project's CLIP; this run's CLIP is a frozen {type(models.clip).__name__}",
                                setting="stage", usage=True)
        names = [n for n in names if n != "clip"]
    if "decoder" not in names:
        return names
    count = models.decoder.num_unets
    if exists(settings.unet) and not 1 <= settings.unet <= count:
        raise TrainingError(f"unet {settings.unet} is out of range; this decoder has unets 1..{count}", setting="unet", usage=True)
    unets = [settings.unet] if exists(settings.unet) else range(1, count + 1)
    return [n for n in names if n != "decoder"] + [f"decoder-unet{n}" for n in unets]


def trainer_options(settings: TrainSettings) -> dict:
    decay_steps = settings.steps if settings.lr_decay == "cosine" else None
    return dict(lr=settings.lr or 3e-4, precision=settings.precision, cosine_decay_max_steps=decay_steps,
                grad_accum_every=settings.grad_accum, sharded=settings.fsdp)


def _compile(net: torch.nn.Module, settings: TrainSettings) -> None:
    """Compile `net`'s forward in place (`nn.Module.compile`: weight names and checkpoints unchanged).

    Called after the trainer is built, so its EMA copy stays eager (it is only read for saving)."""
    if exists(settings.compile):
        net.compile(backend=settings.compile)


def _saver(run: RunDir, trainer, component: str, **deps) -> Callable[[], None]:
    def save() -> None:
        with trainer.ema_weights() as module:
            plain = distributed.unsharded_copy(module, **deps)  # gathers the shards when sharded
            if distributed.rank_world()[0] == 0:
                checkpoint.save_model(run.root, **{component: plain})

    return save


def clip_stage(settings: TrainSettings, models: Models, data: Data, run: RunDir, device) -> Stage:
    from dalle2_core.clip import as_clip_adapter
    from dalle2_core.clip.adapter import resize_center_crop

    clip = models.clip.requires_grad_(True).train()  # building the prior and decoder froze it
    # replicated even with fsdp: the later stages call the CLIP outside its forward, which FSDP
    # would not gather for (and the project's CLIP is small)
    trainer = CLIPTrainer(clip, **{**trainer_options(settings), "sharded": False})
    _compile(clip, settings)
    adapter = as_clip_adapter(clip)

    def loss(batch: Batch) -> torch.Tensor:
        images = resize_center_crop(batch.images.to(device), adapter.image_size)
        return trainer(adapter.tokenize(batch.captions).to(device), images)

    return Stage("clip", trainer, data.images, loss, trainer.update, _saver(run, trainer, "clip"))


def _frozen_clip(models: Models):
    from dalle2_core.clip import as_clip_adapter

    models.clip.eval().requires_grad_(False)
    return as_clip_adapter(models.clip)


def prior_stage(settings: TrainSettings, models: Models, data: Data, run: RunDir, device) -> Stage:
    clip, prior = _frozen_clip(models), models.prior.train()
    trainer = DiffusionPriorTrainer(prior, **trainer_options(settings), **EMA_OPTIONS)
    _compile(prior.net, settings)
    with_encodings = prior.config.condition_on_text_encodings

    def loss(batch: Batch) -> torch.Tensor:
        if exists(batch.text_embed):  # an embedding folder: only the captions' encodings are computed
            cond = dict(text_embed=batch.text_embed.to(device), image_embed=batch.image_embed.to(device))
            if with_encodings:
                text = clip.embed_text(batch.captions)
                cond.update(text_encodings=text.text_encodings, text_mask=text.text_mask)
            return trainer(**cond)
        image = dict(image_embed=batch.image_embed.to(device)) if exists(batch.image_embed) else dict(image=batch.images.to(device))
        return trainer(text=batch.captions, **image)

    source = data.embeddings if exists(data.embeddings) else data.images
    return Stage("prior", trainer, source, loss, trainer.update, _saver(run, trainer, "prior", clip=models.clip))


def decoder_stage(unet: int, trainer: DecoderTrainer, settings: TrainSettings, models: Models, data: Data, run: RunDir,
                  device) -> Stage:
    clip, decoder = _frozen_clip(models), models.decoder.train()
    _compile(decoder.unets[unet - 1], settings)

    def condition(batch: Batch) -> dict:
        cond = dict(text=batch.captions) if decoder.condition_on_text_encodings else {}
        embed = batch.image_embed
        if not exists(embed) and exists(data.embeddings):
            embed = data.embeddings.image_embeds(batch.keys, batch.sources)
        return {**cond, **(dict(image_embed=embed.to(device)) if exists(embed) else {})}

    def loss(batch: Batch) -> torch.Tensor:
        return trainer(batch.images.to(device), **condition(batch), unet_number=unet)

    def sample(preview: Batch, step: int) -> Path | None:
        if not trainer.sharded and distributed.rank_world()[0] != 0:
            return None  # sampling is collective only when the unets are sharded
        cond = condition(preview)
        if "image_embed" not in cond:
            cond["image_embed"] = clip.embed_image(preview.images.to(device)).image_embed
        generator = torch.Generator(device).manual_seed(settings.seed)
        images = trainer.sample(**cond, stop_at_unet_number=unet, sampler="ddim", steps=settings.sample_steps, generator=generator)
        return _save_grid(images, run.samples / f"unet{unet}-step{step:07d}.png") if distributed.rank_world()[0] == 0 else None

    update = lambda: trainer.update(unet)  # noqa: E731
    save = _saver(run, trainer, "decoder", clip=models.clip)
    return Stage(f"decoder-unet{unet}", trainer, data.images, loss, update, save, sample)


def _save_grid(images: torch.Tensor, path: Path) -> Path:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_image(images.float().clamp(0, 1), tmp, format="png", nrow=int(math.ceil(math.sqrt(len(images)))))
    return path


def build_stages(names: list[str], settings: TrainSettings, models: Models, data: Data, run: RunDir, device):
    """Each stage, built when the loop reaches it (its trainer holds optimizer state and EMA copies)."""
    decoder_trainer = None
    for name in names:
        if name == "clip":
            yield clip_stage(settings, models, data, run, device)
        elif name == "prior":
            yield prior_stage(settings, models, data, run, device)
        else:
            if decoder_trainer is None:
                decoder_trainer = DecoderTrainer(models.decoder, **trainer_options(settings), **EMA_OPTIONS)
            yield decoder_stage(int(name.removeprefix("decoder-unet")), decoder_trainer, settings, models, data, run, device)
