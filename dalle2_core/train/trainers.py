"""Trainers for the decoder (one optimizer + EMA per unet) and the diffusion prior.

The spec's API: `loss = trainer(images, text=text, unet_number=n)`, `loss.backward()`,
`trainer.update(n)`, `trainer.sample(image_embed, text=text)` (from the EMA weights).
A trainer knows nothing about the networks beyond "a module with parameters"; the diffusion
wrapper (`Decoder` / `DiffusionPrior`) computes the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from dalle2_core.helpers import cast_tuple, exists
from dalle2_core.train.ema import EMA
from dalle2_core.train.optim import make_optimizer, warmup_cosine_schedule

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _average_gradients_across_processes(net: nn.Module) -> None:
    """Data parallelism: every process ends with the mean gradient over all processes' shards.

    A parameter that got no gradient on one process (an unused branch, e.g. the null condition when
    nothing was dropped) counts as zero there, so every process reduces the same list of tensors.
    """
    if not _distributed():
        return
    world = dist.get_world_size()
    for p in net.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _broadcast_from_first_process(net: nn.Module) -> None:
    """Every process starts from process 0's weights (they were initialised with different seeds)."""
    if _distributed():
        for tensor in net.state_dict().values():
            dist.broadcast(tensor, src=0)


class _NetsTrainer(nn.Module):
    """Optimizer, LR schedule, EMA, step count and mixed precision for a list of networks."""

    def __init__(
        self,
        nets: list[nn.Module],
        *,
        lr=1e-4,
        wd=1e-2,
        eps=1e-8,
        betas=(0.9, 0.99),
        warmup_steps=None,
        cosine_decay_max_steps=None,
        max_grad_norm: float | None = 0.5,
        group_wd_params: bool = True,
        use_ema: bool = True,
        ema_beta: float = 0.9999,
        ema_update_after_step: int = 100,
        ema_update_every: int = 10,
        precision: str = "fp32",
        grad_accum_every: int = 1,
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; accepted: {', '.join(PRECISIONS)}")
        if grad_accum_every < 1:
            raise ValueError(f"grad_accum_every must be >= 1, got {grad_accum_every}")
        n = len(nets)
        for net in nets:
            _broadcast_from_first_process(net)
        lr, wd, eps, warmup_steps, cosine_decay_max_steps = (
            cast_tuple(v, n) for v in (lr, wd, eps, warmup_steps, cosine_decay_max_steps)
        )
        self.optimizers = [
            make_optimizer(net, lr=lr[i], wd=wd[i], eps=eps[i], betas=betas, group_wd_params=group_wd_params)
            for i, net in enumerate(nets)
        ]
        self.schedulers = [
            warmup_cosine_schedule(opt, warmup_steps[i], cosine_decay_max_steps[i]) for i, opt in enumerate(self.optimizers)
        ]
        self.use_ema = use_ema
        self.emas = nn.ModuleList(
            [EMA(net, ema_beta, ema_update_after_step, ema_update_every) for net in nets] if use_ema else []
        )
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.grad_accum_every = grad_accum_every
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16")
        self.register_buffer("steps", torch.zeros(n, dtype=torch.long))
        self._accumulated = [0] * n

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _scale_for_backward(self, loss: torch.Tensor) -> torch.Tensor:
        # the caller runs .backward(): hand back the tensor whose gradient is the right one
        self.last_loss = loss.detach()
        loss = loss / self.grad_accum_every
        return self.scaler.scale(loss) if self.scaler.is_enabled() else loss

    def _update(self, index: int, net: nn.Module) -> bool:
        """One optimizer step for net `index` once `grad_accum_every` backward passes have run."""
        self._accumulated[index] += 1
        if self._accumulated[index] % self.grad_accum_every:
            return False
        optimizer = self.optimizers[index]
        _average_gradients_across_processes(net)
        if exists(self.max_grad_norm):
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), self.max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.schedulers[index].step()
        if self.use_ema:
            self.emas[index].update(net)
        self.steps[index] += 1
        return True

    def num_steps_taken(self, index: int = 0) -> int:
        return int(self.steps[index])

    # training state (optimizers, schedules, EMA, steps, RNG) for resuming; weights are in the model folder

    def training_state(self, nets: list[nn.Module]) -> dict:
        return {
            "nets": [net.state_dict() for net in nets],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [sched.state_dict() for sched in self.schedulers],
            "emas": self.emas.state_dict(),
            "steps": self.steps.clone(),
            "scaler": self.scaler.state_dict(),
            "accumulated": torch.tensor(self._accumulated),
        }

    def load_training_state(self, state: dict, nets: list[nn.Module]) -> None:
        for net, sd in zip(nets, state["nets"], strict=True):
            net.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)
        for sched, sd in zip(self.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(sd)
        self.emas.load_state_dict(state["emas"])
        self.steps.copy_(state["steps"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._accumulated = [int(a) for a in state["accumulated"]]


class DecoderTrainer(_NetsTrainer):
    """Trains the unets of a `Decoder`, each with its own AdamW, LR schedule and EMA."""

    def __init__(self, decoder: nn.Module, lr=1e-4, wd=1e-2, eps=1e-8, max_grad_norm=0.5, **kwargs):
        super().__init__(list(decoder.unets), lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm, **kwargs)
        self.decoder = decoder
        self.num_unets = len(decoder.unets)

    def validate_unet_number(self, unet_number: int | None) -> int:
        if unet_number is None and self.num_unets == 1:
            return 1
        if not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number {unet_number!r} is invalid; accepted: 1..{self.num_unets}")
        return unet_number

    def forward(self, images: torch.Tensor, *args, unet_number: int | None = None, **kwargs) -> torch.Tensor:
        unet_number = self.validate_unet_number(unet_number)
        with self.autocast(images.device):
            loss = self.decoder(images, *args, unet_number=unet_number, **kwargs)
        return self._scale_for_backward(loss)

    def update(self, unet_number: int | None = None) -> bool:
        unet_number = self.validate_unet_number(unet_number)
        return self._update(unet_number - 1, self.decoder.unets[unet_number - 1])

    @property
    def ema_unets(self) -> nn.ModuleList:
        return nn.ModuleList([ema.ema_model for ema in self.emas])

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The decoder with its unets temporarily swapped for their EMA copies."""
        if not self.use_ema:
            yield self.decoder
            return
        online = self.decoder.unets
        self.decoder.unets = self.ema_unets
        try:
            yield self.decoder
        finally:
            self.decoder.unets = online

    @torch.no_grad()
    def sample(self, *args, use_non_ema: bool = False, **kwargs) -> torch.Tensor:
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            if use_non_ema:
                return self.decoder.sample(*args, **kwargs)
            with self.ema_weights() as decoder:
                return decoder.sample(*args, **kwargs)
        finally:
            self.decoder.train(was_training)

    def training_state(self) -> dict:  # type: ignore[override]
        return super().training_state(list(self.decoder.unets))

    def load_training_state(self, state: dict) -> None:  # type: ignore[override]
        super().load_training_state(state, list(self.decoder.unets))


class DiffusionPriorTrainer(_NetsTrainer):
    """Trains the network of a `DiffusionPrior` (CLIP stays frozen) with AdamW and an EMA copy."""

    def __init__(self, diffusion_prior: nn.Module, lr=3e-4, wd=1e-2, eps=1e-6, max_grad_norm=None, **kwargs):
        super().__init__([diffusion_prior.net], lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm, **kwargs)
        self.diffusion_prior = diffusion_prior

    def forward(self, *args, **kwargs) -> torch.Tensor:
        device = next(self.diffusion_prior.net.parameters()).device
        with self.autocast(device):
            loss = self.diffusion_prior(*args, **kwargs)
        return self._scale_for_backward(loss)

    def update(self) -> bool:
        return self._update(0, self.diffusion_prior.net)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The prior with its network temporarily swapped for the EMA copy."""
        if not self.use_ema:
            yield self.diffusion_prior
            return
        online = self.diffusion_prior.net
        self.diffusion_prior.net = self.emas[0].ema_model
        try:
            yield self.diffusion_prior
        finally:
            self.diffusion_prior.net = online

    @torch.no_grad()
    def sample(self, *args, use_non_ema: bool = False, **kwargs) -> torch.Tensor:
        was_training = self.diffusion_prior.training
        self.diffusion_prior.eval()
        try:
            if use_non_ema:
                return self.diffusion_prior.sample(*args, **kwargs)
            with self.ema_weights() as prior:
                return prior.sample(*args, **kwargs)
        finally:
            self.diffusion_prior.train(was_training)

    def training_state(self) -> dict:  # type: ignore[override]
        return super().training_state([self.diffusion_prior.net])

    def load_training_state(self, state: dict) -> None:  # type: ignore[override]
        super().load_training_state(state, [self.diffusion_prior.net])


class CLIPTrainer(_NetsTrainer):
    """Trains the project's `CLIP` contrastively: `loss = trainer(text, images)`, backward, `update()`."""

    def __init__(self, clip: nn.Module, lr=3e-4, wd=1e-2, eps=1e-8, max_grad_norm=1.0, use_ema=False, **kwargs):
        super().__init__([clip], lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm, use_ema=use_ema, **kwargs)
        self.clip = clip

    def forward(self, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with self.autocast(images.device):
            loss = self.clip(text, images, return_loss=True)
        return self._scale_for_backward(loss)

    def update(self) -> bool:
        return self._update(0, self.clip)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The CLIP with its EMA weights loaded for the duration (online weights restored after)."""
        if not self.use_ema:
            yield self.clip
            return
        online = {k: v.clone() for k, v in self.clip.state_dict().items()}
        self.clip.load_state_dict(self.emas[0].ema_model.state_dict())
        try:
            yield self.clip
        finally:
            self.clip.load_state_dict(online)

    def training_state(self) -> dict:  # type: ignore[override]
        return super().training_state([self.clip])

    def load_training_state(self, state: dict) -> None:  # type: ignore[override]
        super().load_training_state(state, [self.clip])
