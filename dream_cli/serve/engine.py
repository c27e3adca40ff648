"""The work queue of `dream serve`: one worker thread runs the models, requests wait in a bounded FIFO.

A request becomes a `Job` (checked input, resolved settings). `Engine.submit` queues it or refuses when the queue
is full; the worker takes the oldest job, and text-to-image jobs behind it with the same model and settings join
its batch up to `max_batch` images. Every image draws its noise from its own generator seeded `seed + i` (as
`dream` does), so an image does not depend on the batch it ran in (up to float rounding). The worker's `on_step`
hook publishes progress (stage, step, a preview of the current image) and raises `Cancelled` when the job was
interrupted, abandoned by every client in its batch, or the server is stopping: the run ends at the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dream_cli.errors import DreamError, one_line
from dream_cli.sampling import per_image_generators

if TYPE_CHECKING:
    import torch

    from dalle2_core.checkpoint import SamplingSettings
    from dream_cli.serve.models import ServedModel

log = logging.getLogger("dream.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` jobs; `retry_after` estimates when a place frees up (seconds)."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; try again in about {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """A job stopped before its images existed: `reason` is "interrupted", "abandoned" or "shutdown"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class JobFailed(Exception):
    """A job that could not make its images; `status` is the HTTP status, the message one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Edit:
    """img2img or inpainting input, already at the model's size: image (1, 3, s, s), mask (1, s, s) True = regenerate."""

    image: torch.Tensor
    mask: torch.Tensor | None
    strength: float


@dataclass(eq=False)  # a job is itself: two equal requests are two jobs (queue removal goes by identity)
class Job:
    """One request's work: `n` images of `prompt` (or variations of `picture`) from seeds `seed`, `seed + 1`, ..."""

    kind: str  # "txt2img" | "img2img" | "variations"
    model: ServedModel
    settings: SamplingSettings
    prompt: str
    n: int
    seed: int
    negative_prompt: str | None = None
    edit: Edit | None = None
    picture: torch.Tensor | None = None  # variations: (1, 3, h, w) in [0, 1]
    task_id: str | None = None
    done: Callable[[Job], None] = lambda job: None  # called on the worker thread once `results` or `error` is set
    results: list | None = None  # [(image (c, h, w) in [0, 1], seed)] once done
    error: BaseException | None = None
    state: str = "queued"  # queued | running | done
    abandoned: bool = False
    stages: list[list] = field(default_factory=list)  # [[stage name, steps done, steps]] while running

    def batch_key(self):
        """Jobs with equal keys may share a batch (text to image, same model, settings and kind of guidance)."""
        if self.kind != "txt2img":
            return None
        return (self.model.name, self.settings, self.negative_prompt is not None)


class Engine:
    """A bounded FIFO of jobs and the worker thread that runs them one batch at a time."""

    def __init__(self, max_queue: int, max_batch: int = 8):
        self.max_queue, self.max_batch = max_queue, max_batch
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._cancel: str | None = None  # why the running batch must stop at its next step
        self._stopping = False
        self._seconds_per_image = 1.0  # moving average, for Retry-After
        self.preview: torch.Tensor | None = None  # the current image of the running batch's first row, (c, h, w)
        self.started_at = 0.0
        self.interrupted = False  # the last batch ended by an interrupt
        self._thread = threading.Thread(target=self._work, name="dream-serve-worker", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    # ---- the event loop's side ------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise JobFailed(503, "the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._queue.append(job)
            self._cond.notify()

    def retry_after(self) -> int:
        waiting = sum(j.n for j in self._queue) + sum(j.n for j in self._running)
        return max(1, round(self._seconds_per_image * waiting / 2))  # about when half the queue is through

    def withdraw(self, job: Job) -> None:
        """The client left: a queued job leaves the queue; a running batch stops once all of its clients left."""
        with self._cond:
            job.abandoned = True
            if job in self._queue:
                self._queue.remove(job)
                job.state = "done"
            elif job in self._running and all(j.abandoned for j in self._running):
                self._cancel = "abandoned"

    def interrupt(self) -> bool:
        """Stop the running batch at its next step (A1111's interrupt); False when nothing runs."""
        with self._cond:
            if self._running:
                self._cancel = "interrupted"
            return bool(self._running)

    def stop(self) -> None:
        """Take no more jobs, refuse the queued ones, cancel the running batch; the worker then exits."""
        with self._cond:
            self._stopping = True
            queued, self._queue = list(self._queue), deque()
            if self._running:
                self._cancel = "shutdown"
            self._cond.notify_all()
        for job in queued:
            self._finish(job, error=JobFailed(503, "the server is shutting down"))

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def position(self, job: Job) -> int | None:
        """0 while running, 1.. while queued (1 = next), None when done or unknown."""
        with self._cond:
            if job in self._running:
                return 0
            return next((i + 1 for i, j in enumerate(self._queue) if j is job), None)

    def snapshot(self) -> dict:
        """What runs now: the jobs of the running batch, their stages, the queue length."""
        with self._cond:
            running = list(self._running)
            return {"running": running, "queued": len(self._queue), "stages": [list(s) for s in running[0].stages] if running else [],
                    "cancel": self._cancel}

    def find(self, task_id: str) -> Job | None:
        with self._cond:
            return next((j for j in (*self._running, *self._queue) if j.task_id == task_id), None)

    # ---- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = self._take()
                self._running, self._cancel, self.preview = batch, None, None
                for job in batch:
                    job.state = "running"
            self.started_at = time.monotonic()
            self._run(batch)
            with self._cond:
                self._running, self.preview = [], None

    def _take(self) -> list[Job]:
        """The oldest job and the queued jobs that can share its batch."""
        head = self._queue.popleft()
        batch, key, total = [head], head.batch_key(), head.n
        if key is not None:
            for job in list(self._queue):
                if total >= self.max_batch:
                    break
                if job.batch_key() == key and total + job.n <= self.max_batch:
                    self._queue.remove(job)
                    batch.append(job)
                    total += job.n
        return batch

    def _run(self, batch: list[Job]) -> None:
        start = time.monotonic()
        try:
            images = self._sample(batch)
        except Cancelled as err:
            self.interrupted = err.reason == "interrupted"
            failure = JobFailed(503, "the server is shutting down") if err.reason == "shutdown" else err
            for job in batch:
                self._finish(job, error=failure)
            return
        except Exception as err:  # noqa: BLE001 - every failure becomes that request's answer
            if len(batch) > 1:  # run each alone, so that a failure is its own request's only
                for job in batch:
                    self._run([job])
                return
            self._finish(batch[0], error=failure_of(err))
            return
        self.interrupted = False
        elapsed = time.monotonic() - start
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * elapsed / max(1, len(images))
        row = 0
        for job in batch:
            self._finish(job, results=[(images[row + i], job.seed + i) for i in range(job.n)])
            row += job.n

    def _finish(self, job: Job, results=None, error: BaseException | None = None) -> None:
        job.results, job.error, job.state = results, error, "done"
        job.done(job)  # the caller's callback answers the request, whatever happens inside it

    def _sample(self, batch: list[Job]) -> list[torch.Tensor]:
        """Every image of the batch, in job order, as (c, h, w) float tensors on the CPU."""
        head = batch[0]
        pipeline, s = head.model.pipeline, head.settings
        stages = [[name, 0, steps] for name, steps in pipeline.stages(s)]
        if head.kind == "variations" and not head.negative_prompt:  # an image's own embedding: no prior
            stages = [st for st in stages if st[0] != "prior"]
        for job in batch:
            job.stages = stages
        hook = self._hook(stages)
        out = []
        if len(batch) > 1:  # one forward for every job: prompts and generators concatenated
            prompts = [job.prompt for job in batch for _ in range(job.n)]
            generators = [g for job in batch for g in per_image_generators(job.seed, job.n, pipeline.device)]
            negatives = [job.negative_prompt for job in batch for _ in range(job.n)] if head.negative_prompt is not None else None
            out.append(pipeline.generate(prompts, s, generator=generators, on_step=hook, negative_prompts=negatives))
        else:
            for first in range(0, head.n, self.max_batch):  # as `dream -n N --batch-size max_batch` does
                b = min(self.max_batch, head.n - first)
                out.append(_one_batch(head, first, b, hook))
        return [img for chunk in out for img in chunk.float().cpu()]

    def _hook(self, stages: list[list]):
        index = {st[0]: st for st in stages}

        def on_step(stage: str, i: int, total: int, x) -> None:
            if self._cancel is not None:
                raise Cancelled(self._cancel)
            st = index.get(stage)
            if st is not None:
                st[1], st[2] = i + 1, total
            if x.ndim == 4 and x.shape[1] in (1, 3):  # an image (not an embedding, not a latent)
                self.preview = x[0].detach()

        return on_step


def _one_batch(job: Job, first: int, b: int, hook) -> torch.Tensor:
    from dalle2_core.pipeline import ImageEdit

    pipeline, s = job.model.pipeline, job.settings
    generators = per_image_generators(job.seed + first, b, pipeline.device)  # image i: seed + i, whatever the batching
    negatives = [job.negative_prompt] * b if job.negative_prompt else None
    if job.kind == "variations":
        return pipeline.variations(job.picture.to(pipeline.device), s, num_variations=b, prompts=job.prompt or None,
                                   generator=generators, on_step=hook, negative_prompts=negatives)
    edit = None
    if job.edit is not None:
        mask = job.edit.mask.to(pipeline.device) if job.edit.mask is not None else None
        edit = ImageEdit(job.edit.image.to(pipeline.device), job.edit.strength, mask)
    return pipeline.generate([job.prompt] * b, s, generator=generators, on_step=hook, edit=edit, negative_prompts=negatives)


def failure_of(err: Exception) -> JobFailed:
    """A sampling failure as the request's answer (one line; the library's words, never a traceback)."""
    from dalle2_core.pipeline import NonFiniteOutputError

    if isinstance(err, NonFiniteOutputError):
        return JobFailed(500, one_line(err))
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower()):
        return JobFailed(500, "ran out of memory while sampling; ask for fewer images")
    if isinstance(err, ValueError):  # a library refusal of input the checks let through
        return JobFailed(422, one_line(err))
    if isinstance(err, DreamError):
        log.error("%s", one_line(err.format_message()))
        return JobFailed(500, "the server could not write the image to its output folder")
    log.error("sampling failed: %s: %s", type(err).__name__, one_line(err))
    return JobFailed(500, f"sampling failed ({type(err).__name__})")


__all__ = ["Cancelled", "Edit", "Engine", "Job", "JobFailed", "QueueFull", "failure_of"]
