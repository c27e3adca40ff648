"""The process group that `torchrun` (or `accelerate launch`) describes, and the data-parallel wrappers.

Every function is a no-op, or the identity, in a single process. Functions marked *collective*
must be called by every process in the same order.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return rank_world()[1] > 1


def init(device: str) -> str:
    """Join the process group the environment describes (gloo on CPU, nccl on CUDA) and return this
    process's device: `cuda:LOCAL_RANK` for CUDA, `device` otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return device


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Process 0's `obj` on every process (*collective*)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (*collective*)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def broadcast_module(net: nn.Module) -> None:
    """Process 0's weights and buffers on every process (*collective*)."""
    if is_distributed():
        for tensor in net.state_dict().values():
            dist.broadcast(tensor, src=0)


def replicate(module: nn.Module, net: nn.Module) -> DistributedDataParallel | None:
    """`module` wrapped in DDP so that only `net`'s parameters (a part of `module`) are reduced;
    None in a single process. Calling the wrapper calls `module.forward`."""
    if not is_distributed():
        return None
    trained = {id(p) for p in net.parameters()}
    ignored = [name for name, p in module.named_parameters() if id(p) not in trained]
    ignored += [name for name, _ in module.named_buffers()]  # buffers are not trained: never synced
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    device_ids = [next(net.parameters()).device] if next(net.parameters()).is_cuda else None
    # init_sync=False: the trainer has already broadcast the weights. find_unused_parameters: a
    # network may hold parameters a configuration never uses (the prior's null image embedding
    # without image dropout); DDP would otherwise wait for their gradients for ever
    return DistributedDataParallel(module, device_ids=device_ids, init_sync=False, find_unused_parameters=True)


def shard(net: nn.Module) -> None:
    """Shard `net`'s parameters across the processes in place (FSDP2): each process keeps 1/world of
    the weights, gradients and optimizer state; forward and backward gather what they need."""
    fully_shard(net)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in module.modules())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded one (*collective* when sharded)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with whole tensors on the CPU (*collective* when sharded; then only
    process 0 gets the tensors, the others an empty dict)."""
    if is_sharded(module):
        return get_model_state_dict(module, options=_FULL)
    return module.state_dict()


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if is_sharded(module):
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
    else:
        module.load_state_dict(state)


def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name, with whole tensors (*collective* when sharded)."""
    return get_optimizer_state_dict(net, optimizer, options=_FULL if is_sharded(net) else StateDictOptions())


def load_full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    groups = state.get("param_groups") or [{}]
    if groups[0].get("params") and isinstance(groups[0]["params"][0], int):  # `optimizer.state_dict()` of older runs
        optimizer.load_state_dict(state)
        return
    # strict=False: a parameter that never had a gradient (an unused null embedding) has no state
    set_optimizer_state_dict(net, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))


def unsharded_copy(module: nn.Module, **deps) -> nn.Module | None:
    """A plain copy of `module` with its whole weights on process 0 (None elsewhere), for saving a
    model folder; `module` itself when nothing in it is sharded (*collective* when sharded)."""
    if not is_sharded(module):
        return module
    state = {k: full_tensor(v).cpu() for k, v in module.state_dict().items()}
    if rank_world()[0] != 0:
        return None
    cls = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    with torch.random.fork_rng(devices=[]):  # initialising the copy must not move the noise of training
        copy = cls.from_config(module.config, **deps)
    copy.load_state_dict(state)
    return copy


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order (*collective*)."""
    if not is_distributed():
        return [obj]
    out = [None] * rank_world()[1]
    dist.all_gather_object(out, obj)
    return out
