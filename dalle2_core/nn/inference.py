"""Inference paths: the memory layout loading picks for the CPU's bfloat16 convolutions, and the opt-in compiled path (a
network compiled for sampling with fixed weights: torch.compile + inductor freezing).

Freezing (`torch._inductor` "freezing") folds the parameters into the compiled graph as constants, so
inductor pre-packs every convolution and linear weight once into oneDNN's blocked layout (eager
oneDNN re-orders them at each call), folds constant subgraphs and fuses the GroupNorm / FiLM / SiLU
chains between convolutions into single loops. The numbers change at rounding level (about 1e-6 on a
U-Net output), which is why this path is a choice and never the default.
"""

from __future__ import annotations

import torch
from torch import nn


def compile_for_inference(module: nn.Module, *, channels_last: bool = False, dynamic: bool = False) -> nn.Module:
    """Compile `module`'s forward in place for sampling under `torch.no_grad()`; returns the module.

    Call it after the weights are final: frozen weights are constants of the compiled graph, so a later
    `load_state_dict` or optimiser step is not seen by graphs compiled before it (calls with gradients
    enabled compile their own, unfrozen graph). The first call of each input shape compiles (minutes on
    a small CPU); `dynamic=True` compiles once for varying batch sizes instead. `channels_last` also
    converts the weights' memory layout (inductor already runs the convolutions channels-last). Module
    names, weights and hooks are unchanged; the compiled forward is an attribute of this instance only.
    """
    from torch._inductor import config as inductor_config

    module.eval()
    if channels_last:
        module.to(memory_format=torch.channels_last)
    compiled = torch.compile(module.forward, backend="inductor", dynamic=dynamic)

    def forward(*args, **kwargs):
        # freezing must be on while dynamo traces (it then keeps the parameters as graph constants, which
        # is what lets inductor pre-pack them); a patch around the call sets it for this module only
        # (`torch.compile(options={"freezing": True})` does not reach dynamo and packs nothing)
        with inductor_config.patch(freezing=not torch.is_grad_enabled()):
            return compiled(*args, **kwargs)

    module.forward = forward
    return module


def prefer_channels_last(module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Module:
    """Store `module`'s 4-d weights channels-last (NHWC) when it samples in bfloat16 on the CPU; returns the module.

    oneDNN runs bfloat16 convolutions in NHWC and otherwise reorders every weight and activation on every call: with
    the weights stored so, each convolution's output is NHWC too and the reorders go (a decoder U-Net call takes 0.67 to
    0.75 of diffusers' time instead of 0.93, the MoVQ decode a third; benchmarks/diffusers_compare.py). The numbers
    change at bfloat16 rounding level only. float32 and other devices keep the contiguous layout, where it does not pay.
    Parameters are converted one at a time, so the peak stays at the weights plus the largest tensor."""
    if torch.device(device if device is not None else "cpu").type == "cpu" and dtype == torch.bfloat16:
        module.to(memory_format=torch.channels_last)
    return module


__all__ = ["compile_for_inference", "prefer_channels_last"]
