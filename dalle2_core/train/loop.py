"""The folder training loop behind `dream train`: CLIP, then the prior, then each decoder unet.

The run directory is a model folder (`dalle2_core.checkpoint`) that `dream --model RUN_DIR` samples
from, plus `training/` (resumable state per stage, atomically replaced) and `samples/` (grids).
Progress goes to a caller-supplied `report(event, **info)` callback; nothing here prints.
Under `torchrun` every process trains on its shard of each batch and only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dalle2_core import checkpoint
from dalle2_core.helpers import exists
from dalle2_core.train.presets import load_presets
from dalle2_core.train.trainers import CLIPTrainer, DecoderTrainer, DiffusionPriorTrainer

STAGES = ("clip", "prior", "decoder")
Reporter = Callable[..., None]


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message is one line."""


@dataclass
class TrainSettings:
    data: Path
    out: Path
    stage: str = "all"
    unet: int | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float | None = None
    lr_decay: str = "constant"  # "cosine": to zero at `steps` (per stage)
    image_size: int = 64
    save_every: int = 500
    sample_every: int = 0
    precision: str = "fp32"
    clip: str | None = None  # "open_clip:ARCH/PRETRAINED" for a pretrained, frozen CLIP
    resume: bool = False
    seed: int = 0
    config: Path | None = None
    num_workers: int = 0
    compile: str | None = None  # a torch.compile backend ("inductor") for the network each stage trains
    device: str = "cpu"
    sample_steps: int = 25
    extra: dict = field(default_factory=dict)

    def stages(self) -> tuple[str, ...]:
        if self.stage == "all":
            return STAGES[1:] if exists(self.clip) else STAGES
        if self.stage not in STAGES:
            raise TrainingError(f"stage {self.stage!r} is unknown; accepted: all, {', '.join(STAGES)}")
        if self.stage == "clip" and exists(self.clip):
            raise TrainingError(f"--stage clip trains the project's CLIP; --clip {self.clip} is pretrained and frozen")
        return (self.stage,)


# --- distributed -----------------------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> bool:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True


def _barrier() -> None:
    if _rank_world()[1] > 1:
        dist.barrier()


# --- run directory ---------------------------------------------------------------------------------


class RunDir:
    """Paths and small JSON records of a training run."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.training = self.root / "training"
        self.samples = self.root / "samples"

    def state_path(self, stage: str) -> Path:
        return self.training / f"{stage}.pt"

    def save_state(self, stage: str, state: dict) -> None:
        with checkpoint.atomic_path(self.state_path(stage)) as tmp:
            torch.save(state, tmp)

    def load_state(self, stage: str) -> dict | None:
        path = self.state_path(stage)
        if not path.is_file():
            return None
        # plain tensors and containers only: never unpickle code
        return torch.load(path, map_location="cpu", weights_only=True)


# --- the loop ---------------------------------------------------------------------------------------


def _batches(dataset, settings: TrainSettings, start_step: int) -> Iterator[tuple[int, list]]:
    """(step, batch) from `start_step` on; the order depends only on the seed, so a resumed run
    sees exactly the batches an uninterrupted one would have."""
    rank, world = _rank_world()
    if settings.batch_size % world:
        raise TrainingError(f"batch size {settings.batch_size} is not divisible by {world} processes")
    local = settings.batch_size // world
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed, drop_last=True)
    per_epoch = len(sampler) // local
    if per_epoch == 0:
        raise TrainingError(f"{len(dataset)} examples are fewer than one batch of {settings.batch_size}")
    step = start_step
    while True:
        epoch, skip = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        chunks = [indices[i * local : (i + 1) * local] for i in range(skip, per_epoch)]
        # its own generator: creating an iterator must not draw from the global RNG that the
        # diffusion noise comes from, or a resumed run would see different noise
        generator = torch.Generator().manual_seed(settings.seed + epoch)
        loader = DataLoader(dataset, batch_sampler=chunks, collate_fn=collate_pairs, num_workers=settings.num_workers, generator=generator)
        for batch in loader:
            yield step, batch
            step += 1


def _check_finite(loss: torch.Tensor, stage: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"{stage} loss became {loss.item()} at step {step}; stopped without overwriting the last good checkpoint"
        )


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _train_stage(name, trainer, step_fn, update_fn, save_fn, sample_fn, dataset, settings, run: RunDir, report: Reporter):
    """Steps `trainer` (`step_fn(batch) -> loss`, then `update_fn()`) from its saved step to
    `settings.steps`; writes the model (`save_fn`) and the resumable state every `save_every` steps."""
    rank, world = _rank_world()
    total = settings.steps
    state = run.load_state(name) if settings.resume else None
    start = 0
    if exists(state):
        trainer.load_training_state(state["trainer"])
        _restore_rng(state["rng"][rank])
        start = state["step"]
    report("stage", stage=name, start=start, total=total)

    def save(step: int) -> None:
        rngs = [_rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, _rng_state())
        if rank == 0:
            save_fn()  # the model first: a state file never names a step whose weights are missing
            run.save_state(name, {"step": step, "trainer": trainer.training_state(), "rng": rngs})
        _barrier()
        report("saved", stage=name, step=step, path=str(run.root))

    if start >= total:
        return
    for step, batch in _batches(dataset, settings, start):
        loss = step_fn(batch)
        loss.backward()
        _check_finite(trainer.last_loss, name, step)
        update_fn()
        done = step + 1
        report("step", stage=name, step=done, total=total, loss=trainer.last_loss.item())
        if settings.sample_every and done % settings.sample_every == 0 and rank == 0 and exists(sample_fn):
            report("sample", stage=name, step=done, path=str(sample_fn(done)))
        if done % settings.save_every == 0 or done == total:
            save(done)
        if done >= total:
            break


# --- stages -----------------------------------------------------------------------------------------


class _Indexed(torch.utils.data.Dataset):
    """(index, image, caption) so a batch can pick up its cached CLIP embeddings."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return None if item is None else (i, *item)


def collate_pairs(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack (index, image, caption) items; an item the dataset could not read (None) is dropped."""
    items = [item for item in items if item is not None]
    if not items:
        return torch.empty(0, dtype=torch.long), torch.empty(0), []
    index, images, captions = zip(*items)
    return torch.tensor(index), torch.stack(images), list(captions)


@torch.no_grad()
def embed_dataset(clip, dataset, batch_size: int, device: torch.device, report: Reporter) -> dict[str, torch.Tensor]:
    """CLIP image and text embeddings (and text encodings) of every example, computed once."""
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size, collate_fn=collate_pairs)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("index", "image_embed", "text_embed", "text_encodings", "text_mask")}
    report("stage", stage="embed", start=0, total=len(loader))
    for i, (index, images, captions) in enumerate(loader):
        if not captions:
            continue
        text = clip.embed_text(captions)
        parts["index"].append(index)
        parts["image_embed"].append(clip.embed_image(images.to(device)).image_embed.cpu())
        parts["text_embed"].append(text.text_embed.cpu())
        parts["text_encodings"].append(text.text_encodings.cpu())
        parts["text_mask"].append(text.text_mask.cpu())
        report("step", stage="embed", step=i + 1, total=len(loader))
    cat = {k: torch.cat(v) for k, v in parts.items()}
    # rows by dataset index; an unreadable example keeps a zero row and is never drawn (its batch drops it)
    table = {k: torch.zeros((len(dataset), *v.shape[1:]), dtype=v.dtype) for k, v in cat.items() if k != "index"}
    for k in table:
        table[k][cat["index"]] = cat[k]
    return table


def _fingerprint(clip, dataset, settings: TrainSettings) -> str:
    """Identifies an embedding table: the CLIP's weights or name, the examples, the image size."""
    digest = hashlib.sha256(json.dumps([settings.clip, settings.image_size, [(str(p), c) for p, c in dataset.items]]).encode())
    if not exists(settings.clip):  # the project's CLIP changes with training: hash its weights
        for value in clip.state_dict().values():
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cached_embeddings(clip, dataset, settings: TrainSettings, run: RunDir, device, report: Reporter) -> dict[str, torch.Tensor]:
    """The embedding table from `training/embeddings.safetensors` when it matches, else computed
    by rank 0 and saved there (a pretrained CLIP on a large folder embeds each example once)."""
    path = run.training / "embeddings.safetensors"
    fingerprint = _fingerprint(clip, dataset, settings)
    rank, _ = _rank_world()
    if rank == 0 and not _matches(path, fingerprint):
        table = embed_dataset(clip, dataset, settings.batch_size, device, report)
        with checkpoint.atomic_path(path) as tmp:
            save_file(table, str(tmp), metadata={"fingerprint": fingerprint})
    _barrier()
    if not _matches(path, fingerprint):
        raise TrainingError(f"{path} does not match this run's CLIP and data; delete it to recompute")
    return load_file(str(path))


def _matches(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("fingerprint") == fingerprint


def _lookup(table: dict[str, torch.Tensor], index: torch.Tensor, device) -> dict[str, torch.Tensor]:
    return {k: v[index].to(device) for k, v in table.items()}


def _save_grid(images: torch.Tensor, path: Path) -> Path:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.atomic_path(path) as tmp:
        save_image(images.float().clamp(0, 1), tmp, format="png", nrow=int(math.ceil(math.sqrt(len(images)))))
    return path


def _build_clip(settings: TrainSettings, presets: dict, run: RunDir, device):
    from dalle2_core.clip import CLIP, OpenClipAdapter

    if exists(settings.clip):
        spec = settings.clip.removeprefix("open_clip:")
        arch, _, pretrained = spec.partition("/")
        if not settings.clip.startswith("open_clip:") or not arch:
            raise TrainingError(f"--clip {settings.clip!r} is not understood; accepted: open_clip:ARCH/PRETRAINED")
        return OpenClipAdapter(arch, pretrained or None).to(device)
    if (run.root / "clip" / checkpoint.CONFIG_FILE).is_file():
        return checkpoint.load_component(run.root / "clip", device=device)
    return CLIP(**presets["clip"]).to(device)


def _maybe_compile(net: torch.nn.Module, settings: TrainSettings) -> None:
    """Compile `net`'s forward in place (`nn.Module.compile`: weight names and checkpoints unchanged).

    Called after the trainer is built, so its EMA copy stays eager (it is only read for saving)."""
    if exists(settings.compile):
        net.compile(backend=settings.compile)


def _trainer_options(settings: TrainSettings) -> dict:
    if settings.lr_decay not in ("constant", "cosine"):
        raise TrainingError(f"lr decay {settings.lr_decay!r} is unknown; accepted: constant, cosine")
    decay_steps = settings.steps if settings.lr_decay == "cosine" else None
    return dict(lr=settings.lr or 3e-4, precision=settings.precision, cosine_decay_max_steps=decay_steps)


def train(settings: TrainSettings, report: Reporter = lambda event, **info: None) -> Path:
    """Run `settings.stages()` in order into `settings.out`; returns the model folder."""
    from dalle2_core.clip import as_clip_adapter
    from dalle2_core.clip.adapter import resize_center_crop
    from dalle2_core.data.folder import ImageTextFolder
    from dalle2_core.decoder import Decoder, Unet
    from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork

    run = RunDir(settings.out)
    rank, _ = _rank_world()
    if not settings.resume and run.root.exists() and any(run.root.iterdir()):
        raise TrainingError(f"{run.root} is not empty; pass --resume to continue that run, or choose another --out")
    if settings.resume and not run.training.is_dir():
        raise TrainingError(f"--resume: {run.root} holds no training run (no {run.training.name}/ folder)")
    stages = settings.stages()
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed + rank)
    presets = load_presets(settings.image_size, settings.config)
    dataset = ImageTextFolder(settings.data, image_size=settings.image_size)  # raises on an empty folder
    if rank == 0:
        run.training.mkdir(parents=True, exist_ok=True)
        with checkpoint.atomic_path(run.training / "settings.json") as tmp:
            tmp.write_text(json.dumps({**asdict(settings), "presets": presets}, indent=2, default=str))
    _barrier()
    indexed = _Indexed(dataset)

    # CLIP: trained here (the project's), or pretrained and frozen (open_clip)
    clip = _build_clip(settings, presets, run, device)
    if "clip" in stages:
        trainer = CLIPTrainer(clip, **_trainer_options(settings)).to(device)
        _maybe_compile(clip, settings)
        adapter = as_clip_adapter(clip)

        def clip_step(batch):
            _, images, captions = batch
            images = resize_center_crop(images.to(device), adapter.image_size)
            return trainer(adapter.tokenize(captions).to(device), images)

        save_clip = lambda: checkpoint.save_model(run.root, clip=clip)  # noqa: E731
        _train_stage("clip", trainer, clip_step, trainer.update, save_clip, None, indexed, settings, run, report)
    clip = as_clip_adapter(clip).eval().requires_grad_(False)
    if rank == 0:
        checkpoint.save_model(run.root, clip=clip)

    remaining = [s for s in stages if s != "clip"]
    if remaining:
        table = _cached_embeddings(clip, dataset, settings, run, device, report)
    ema = dict(ema_beta=0.995, ema_update_after_step=100, ema_update_every=1)

    if "prior" in remaining:
        if settings.resume and (run.root / "prior" / checkpoint.CONFIG_FILE).is_file():
            prior = checkpoint.load_component(run.root / "prior", device=device, clip=clip)
        else:
            net = DiffusionPriorNetwork(**presets["prior_network"])
            prior = DiffusionPrior(net, clip=clip, **presets["prior"]).to(device)
        trainer = DiffusionPriorTrainer(prior, **_trainer_options(settings), **ema).to(device)
        _maybe_compile(prior.net, settings)

        def prior_step(batch):
            index, _, _ = batch
            return trainer(**_lookup(table, index, device))

        def save_prior():
            with trainer.ema_weights() as ema_prior:
                checkpoint.save_model(run.root, prior=ema_prior)

        _train_stage("prior", trainer, prior_step, trainer.update, save_prior, None, indexed, settings, run, report)

    if "decoder" in remaining:
        if settings.resume and (run.root / "decoder" / checkpoint.CONFIG_FILE).is_file():
            decoder = checkpoint.load_component(run.root / "decoder", device=device, clip=clip)
        else:
            unets = tuple(Unet(**kw) for kw in presets["unets"])
            decoder = Decoder(unet=unets, clip=clip, **presets["decoder"]).to(device)
        trainer = DecoderTrainer(decoder, **_trainer_options(settings), **ema).to(device)
        preview = _lookup(table, torch.arange(min(16, len(dataset))), device)
        numbers = [settings.unet] if exists(settings.unet) else range(1, decoder.num_unets + 1)
        for n in numbers:
            if not 1 <= n <= decoder.num_unets:
                raise TrainingError(f"--unet {n} is out of range; this decoder has unets 1..{decoder.num_unets}")
            name = f"decoder-unet{n}"
            _maybe_compile(decoder.unets[n - 1], settings)

            def decoder_step(batch, n=n):
                index, images, _ = batch
                cond = _lookup(table, index, device)
                cond.pop("text_embed")
                return trainer(images.to(device), **cond, unet_number=n)

            def save_decoder():
                with trainer.ema_weights() as ema_decoder:
                    checkpoint.save_model(run.root, decoder=ema_decoder)

            def sample_decoder(step, n=n):
                images = trainer.sample(
                    image_embed=preview["image_embed"],
                    text_encodings=preview["text_encodings"],
                    text_mask=preview["text_mask"],
                    stop_at_unet_number=n,
                    sampler="ddim",
                    steps=settings.sample_steps,
                    generator=torch.Generator(device).manual_seed(settings.seed),
                )
                return _save_grid(images, run.samples / f"unet{n}-step{step:07d}.png")

            update = lambda n=n: trainer.update(n)  # noqa: E731
            _train_stage(name, trainer, decoder_step, update, save_decoder, sample_decoder, indexed, settings, run, report)

    _barrier()
    report("done", path=str(run.root), skipped=dict(dataset.skipped_counts))
    return run.root
