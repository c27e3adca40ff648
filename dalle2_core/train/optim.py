"""AdamW with weight decay only on matrices, and a linear-warm-up / cosine-decay schedule."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR


def make_optimizer(
    params_or_module,
    lr: float,
    wd: float = 1e-2,
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.99),
    group_wd_params: bool = True,
) -> AdamW:
    """AdamW; biases and norm gains (tensors with < 2 dims) are excluded from weight decay."""
    if not (0 < lr <= 1e-2):
        raise ValueError(f"learning rate {lr} is out of range; accepted: (0, 1e-2] (1e-4 to 5e-4 is typical)")
    source = params_or_module.parameters() if isinstance(params_or_module, nn.Module) else params_or_module
    params = [p for p in source if p.requires_grad]
    if group_wd_params and wd > 0:
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": wd}]
    return AdamW(groups, lr=lr, eps=eps, betas=betas)


def warmup_cosine_schedule(optimizer, warmup_steps: int | None = None, cosine_decay_max_steps: int | None = None) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at `cosine_decay_max_steps`."""
    warmup = warmup_steps or 0
    total = cosine_decay_max_steps

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if total:
            progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
            f *= 0.5 * (1 + math.cos(math.pi * progress))
        return f

    return LambdaLR(optimizer, factor)
