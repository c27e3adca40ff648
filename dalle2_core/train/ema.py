"""Exponential moving average of a network's weights, on top of torch's `AveragedModel`."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(nn.Module):
    """EMA copy of `model` (Polyak averaging), updated every `update_every` steps after a warm-up.

    Until `update_after_step` the copy simply tracks the online weights: averaging the first,
    mostly random iterates would only slow the copy down.
    """

    def __init__(self, model: nn.Module, beta: float = 0.9999, update_after_step: int = 100, update_every: int = 10):
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ema beta must be in [0, 1), got {beta}")
        if update_every < 1:
            raise ValueError(f"ema update_every must be >= 1, got {update_every}")
        self.beta, self.update_after_step, self.update_every = beta, update_after_step, update_every
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(beta), use_buffers=True)
        self.averaged.requires_grad_(False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def ema_model(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        step = int(self.step)
        if step <= self.update_after_step:
            for ema_t, t in zip(self.ema_model.state_dict().values(), model.state_dict().values()):
                ema_t.copy_(t)
            return
        if step % self.update_every == 0:
            self.averaged.update_parameters(model)
