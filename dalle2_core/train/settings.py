"""What a training run is asked to do (`TrainSettings`), checked before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dalle2_core.helpers import exists
from dalle2_core.train.trainers import PRECISIONS

STAGES = ("clip", "prior", "decoder")
LR_DECAYS = ("constant", "cosine")
DEFAULT_IMAGE_SIZE = 64


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message is one line, in the library's terms.

    `setting` names the `TrainSettings` field at fault (a front end names its own option for it),
    `usage` says the settings themselves are wrong rather than the data or the disk, and `code`
    marks the few errors a front end may add advice to ("out_not_empty", "no_run")."""

    def __init__(self, message: str, *, setting: str | None = None, usage: bool = False, code: str | None = None):
        super().__init__(message)
        self.setting, self.usage, self.code = setting, usage, code


@dataclass(frozen=True)
class OpenClip:
    """A frozen open_clip model: architecture and pretrained tag (None: random weights, no download)."""

    arch: str
    pretrained: str | None = None

    def __str__(self) -> str:
        return f"open_clip:{self.arch}" + (f"/{self.pretrained}" if exists(self.pretrained) else "")


@dataclass
class TrainSettings:
    out: Path
    data: str | Path | None = None  # an image folder, or webdataset shards ("shards/{00000..00099}.tar")
    embeddings: Path | None = None  # clip-retrieval embeddings: the prior trains on them, the decoder looks them up
    stage: str = "all"
    unet: int | None = None
    steps: int = 1000  # optimizer steps per stage (per unet)
    batch_size: int = 32  # examples per optimizer step, over all processes and accumulated micro-batches
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = None
    lr_decay: str = "constant"  # "cosine": to zero at `steps` (per stage)
    image_size: int | None = None  # None: the resumed run's, the init model's, else DEFAULT_IMAGE_SIZE
    save_every: int = 500
    sample_every: int = 0
    precision: str = "fp32"
    clip: OpenClip | None = None  # a pretrained, frozen CLIP instead of training the project's
    init: str | None = None  # a model (folder, Hub id, "shapes") whose weights the stages start from
    resume: bool = False
    seed: int = 0
    config: Path | None = None
    num_workers: int = 0
    shuffle_buffer: int = 1000  # samples mixed by a shard stream
    compile: str | None = None  # a torch.compile backend ("inductor") for the network each stage trains
    fsdp: bool = False  # shard the trained network and its optimizer state across processes (FSDP2)
    device: str = "cpu"
    sample_steps: int = 25

    def check(self, world: int) -> None:
        """Values and combinations; raises `TrainingError` (usage) naming the first wrong setting."""
        def refuse(setting: str, message: str):
            raise TrainingError(message, setting=setting, usage=True)

        if self.stage not in ("all", *STAGES):
            refuse("stage", f"stage {self.stage!r} is unknown; accepted: all, {', '.join(STAGES)}")
        if self.stage == "clip" and exists(self.clip):
            refuse("clip", f"the clip stage trains the project's CLIP; {self.clip} is pretrained and frozen")
        if self.lr_decay not in LR_DECAYS:
            refuse("lr_decay", f"lr decay {self.lr_decay!r} is unknown; accepted: {', '.join(LR_DECAYS)}")
        if self.precision not in PRECISIONS:
            refuse("precision", f"precision {self.precision!r} is unknown; accepted: {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            refuse("precision", f"fp16 needs a CUDA device (gradient scaling); on {self.device} use bf16 or fp32")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "sample_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                refuse(name, f"{name} {getattr(self, name)!r} is invalid; accepted: an integer >= 1")
        if self.batch_size % (world * self.grad_accum):
            refuse("batch_size", f"batch size {self.batch_size} does not split into {self.grad_accum} micro-batch(es) "
                                 f"on each of {world} process(es); accepted: a multiple of {world * self.grad_accum}")
        if self.fsdp and world < 2:
            refuse("fsdp", "sharding (fsdp) needs 2 or more processes; start them with torchrun")
        if not exists(self.data) and self.stages_asked() != ("prior",):
            refuse("data", "training data is needed (a folder or shards); only the prior can train from embeddings alone")
        if not exists(self.data) and not exists(self.embeddings):
            refuse("data", "no training data: give an image folder, shards or an embedding folder")

    def stages_asked(self) -> tuple[str, ...]:
        return STAGES if self.stage == "all" else (self.stage,)

    @property
    def local_batch(self) -> int:
        """Examples in one micro-batch of one process."""
        from dalle2_core.train.distributed import rank_world

        return self.batch_size // (rank_world()[1] * self.grad_accum)
