"""Trainers for the decoder (one optimizer + EMA per unet), the diffusion prior and the project CLIP.

The spec's API: `loss = trainer(images, text=text, unet_number=n)`, `loss.backward()`,
`trainer.update(n)`, `trainer.sample(image_embed, text=text)` (from the EMA weights).
A trainer knows nothing about the networks beyond "a module with parameters"; the diffusion
wrapper (`Decoder` / `DiffusionPrior`) computes the loss.

Data parallelism: inside a process group the forward runs through `DistributedDataParallel`
(bucketed all-reduce overlapped with backward) over the network being trained, or, with
`sharded=True`, the networks are sharded with FSDP2 (`fully_shard`: weights, gradients and
optimizer state split across processes). Either way every process ends a step with the same weights.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from dalle2_core.helpers import cast_tuple, eval_mode, exists
from dalle2_core.train import distributed
from dalle2_core.train.ema import EMA
from dalle2_core.train.optim import make_optimizer, warmup_cosine_schedule

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _NetsTrainer(nn.Module):
    """Optimizer, LR schedule, EMA, step count, mixed precision and data parallelism for the
    networks `nets` inside `module` (the module whose forward computes the loss)."""

    def __init__(
        self,
        module: nn.Module,
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
        sharded: bool = False,
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; accepted: {', '.join(PRECISIONS)}")
        if grad_accum_every < 1:
            raise ValueError(f"grad_accum_every must be >= 1, got {grad_accum_every}")
        if sharded and not distributed.is_distributed():
            raise ValueError("sharded=True needs a process group of 2 or more processes (torchrun)")
        n = len(nets)
        self.module, self.nets, self.sharded = module, list(nets), sharded
        for net in nets:  # processes initialised with different seeds start from process 0's weights
            distributed.broadcast_module(net)
        self.use_ema = use_ema
        self.emas = nn.ModuleList(
            [EMA(net, ema_beta, ema_update_after_step, ema_update_every) for net in nets] if use_ema else []
        )
        self._replicas = self._parallelise()
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
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.grad_accum_every = grad_accum_every
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16")
        self.register_buffer("steps", torch.zeros(n, dtype=torch.long))
        self._accumulated = [0] * n
        self.last_grad_norm: float | None = None

    def _parallelise(self) -> list:
        """Shard the networks and their EMA copies (FSDP2; before the optimizers exist, as FSDP
        replaces the parameters), or give each network a DDP wrapper of the module (None alone)."""
        if not self.sharded:
            return [distributed.replicate(self.module, net) for net in self.nets]
        for net in [*self.nets, *(ema.ema_model for ema in self.emas)]:
            distributed.shard(net)
        return [None] * len(self.nets)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _loss(self, index: int, device: torch.device, *args, **kwargs) -> torch.Tensor:
        """The module's loss through the data-parallel wrapper of net `index`; gradients are
        synchronised only on the backward pass that completes an accumulation."""
        syncs = (self._accumulated[index] + 1) % self.grad_accum_every == 0
        replica, net = self._replicas[index], self.nets[index]
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.autocast(device))
            if exists(replica) and not syncs:
                stack.enter_context(replica.no_sync())
            if self.sharded:
                net.set_requires_gradient_sync(syncs)
                # raised for any network that returns a view; ours are never modified in place after
                # (tests/train/test_train_ddp.py: sharded and replicated training give the same weights)
                stack.enter_context(warnings.catch_warnings())
                warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            loss = (replica or self.module)(*args, **kwargs)
        # the caller runs .backward(): hand back the tensor whose gradient is the right one
        self.last_loss = loss.detach()
        loss = loss / self.grad_accum_every
        return self.scaler.scale(loss) if self.scaler.is_enabled() else loss

    def _update(self, index: int) -> bool:
        """One optimizer step for net `index` once `grad_accum_every` backward passes have run."""
        self._accumulated[index] += 1
        if self._accumulated[index] % self.grad_accum_every:
            return False
        net, optimizer = self.nets[index], self.optimizers[index]
        self.scaler.unscale_(optimizer)
        params = [p for p in net.parameters() if p.grad is not None]
        if exists(self.max_grad_norm):
            norm = nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in params])
        self.last_grad_norm = float(distributed.full_tensor(norm))
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

    def last_lr(self, index: int = 0) -> float:
        return self.schedulers[index].get_last_lr()[0]

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The module with its networks' weights temporarily replaced by their EMA (online weights restored after)."""
        if not self.use_ema:
            yield self.module
            return
        online = [{k: v.detach().clone() for k, v in net.state_dict().items()} for net in self.nets]
        for net, ema in zip(self.nets, self.emas):
            _copy_weights(net.state_dict(), ema.ema_model.state_dict())
        try:
            yield self.module
        finally:
            for net, state in zip(self.nets, online):
                _copy_weights(net.state_dict(), state)

    @torch.no_grad()
    def sample(self, *args, use_non_ema: bool = False, **kwargs) -> torch.Tensor:
        """`module.sample(...)` from the EMA weights (or the online ones), in eval mode."""
        with eval_mode(self.module):
            if use_non_ema:
                return self.module.sample(*args, **kwargs)
            with self.ema_weights() as module:
                return module.sample(*args, **kwargs)

    # training state (optimizers, schedules, EMA, steps) for resuming; whole tensors even when sharded

    def training_state(self) -> dict:
        return {
            "nets": [distributed.full_state(net) for net in self.nets],
            "optimizers": [distributed.full_optimizer_state(net, opt) for net, opt in zip(self.nets, self.optimizers)],
            "schedulers": [sched.state_dict() for sched in self.schedulers],
            "emas": [distributed.full_state(ema) for ema in self.emas],
            "steps": self.steps.clone(),
            "scaler": self.scaler.state_dict(),
            "accumulated": torch.tensor(self._accumulated),
        }

    def load_training_state(self, state: dict) -> None:
        for net, sd in zip(self.nets, state["nets"], strict=True):
            distributed.load_full_state(net, sd)
        for net, opt, sd in zip(self.nets, self.optimizers, state["optimizers"], strict=True):
            distributed.load_full_optimizer_state(net, opt, sd)
        for sched, sd in zip(self.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(sd)
        if isinstance(state["emas"], dict):  # older runs stored the EMA list as one state dict
            self.emas.load_state_dict(state["emas"])
        else:
            for ema, sd in zip(self.emas, state["emas"], strict=True):
                distributed.load_full_state(ema, sd)
        self.steps.copy_(state["steps"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._accumulated = [int(a) for a in state["accumulated"]]


@torch.no_grad()
def _copy_weights(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    # state-dict tensors share storage with the module (sharded ones too): copying writes the weights
    for key, tensor in target.items():
        tensor.copy_(source[key])


class DecoderTrainer(_NetsTrainer):
    """Trains the unets of a `Decoder`, each with its own AdamW, LR schedule and EMA."""

    def __init__(self, decoder: nn.Module, lr=1e-4, wd=1e-2, eps=1e-8, max_grad_norm=0.5, **kwargs):
        super().__init__(decoder, list(decoder.unets), lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm, **kwargs)
        self.decoder = decoder
        self.num_unets = len(decoder.unets)

    @property
    def ema_unets(self) -> list[nn.Module]:
        """The EMA copy of each unet (DALLE2-pytorch's name), empty without EMA."""
        return [ema.ema_model for ema in self.emas]

    def validate_unet_number(self, unet_number: int | None) -> int:
        if unet_number is None and self.num_unets == 1:
            return 1
        if not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number {unet_number!r} is invalid; accepted: 1..{self.num_unets}")
        return unet_number

    def forward(self, images: torch.Tensor, *args, unet_number: int | None = None, **kwargs) -> torch.Tensor:
        unet_number = self.validate_unet_number(unet_number)
        return self._loss(unet_number - 1, images.device, images, *args, unet_number=unet_number, **kwargs)

    def update(self, unet_number: int | None = None) -> bool:
        return self._update(self.validate_unet_number(unet_number) - 1)


class DiffusionPriorTrainer(_NetsTrainer):
    """Trains the network of a `DiffusionPrior` (CLIP stays frozen) with AdamW and an EMA copy."""

    def __init__(self, diffusion_prior: nn.Module, lr=3e-4, wd=1e-2, eps=1e-6, max_grad_norm=None, **kwargs):
        super().__init__(diffusion_prior, [diffusion_prior.net], lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm, **kwargs)
        self.diffusion_prior = diffusion_prior

    def forward(self, *args, **kwargs) -> torch.Tensor:
        device = next(self.diffusion_prior.net.parameters()).device
        return self._loss(0, device, *args, **kwargs)

    def update(self) -> bool:
        return self._update(0)


class CLIPTrainer(_NetsTrainer):
    """Trains the project's `CLIP` contrastively: `loss = trainer(text, images)`, backward, `update()`.

    Under data parallelism each process contrasts its own shard of the batch (negatives are local)."""

    def __init__(self, clip: nn.Module, lr=3e-4, wd=1e-2, eps=1e-8, max_grad_norm=1.0, use_ema=False, **kwargs):
        super().__init__(clip, [clip], lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm, use_ema=use_ema, **kwargs)
        self.clip = clip

    def forward(self, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self._loss(0, images.device, text, images, return_loss=True)

    def update(self) -> bool:
        return self._update(0)
