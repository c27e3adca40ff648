"""Data parallelism over 2 CPU processes (gloo) makes the same update as 1 process on the full batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dalle2_core.train import DiffusionPriorTrainer


class Prior(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))

    def forward(self, x):
        return (self.net(x) - x.roll(1, -1)).pow(2).mean()


def _data():
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


def _train(x, steps=3, perturb=False):
    prior = Prior()
    if perturb:  # a process that initialised differently: the trainer starts it from process 0's weights
        with torch.no_grad():
            for p in prior.parameters():
                p.add_(1.0)
    trainer = DiffusionPriorTrainer(prior, lr=1e-2, use_ema=False, max_grad_norm=1.0)
    for _ in range(steps):
        trainer(x).backward()
        trainer.update()
    return prior.net.state_dict()


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        state = _train(_data().chunk(world)[rank], perturb=rank == 1)
        torch.save(state, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_full_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    single = _train(_data())
    for rank in (0, 1):
        ddp = torch.load(f"{out}.{rank}")
        for key, value in single.items():
            assert torch.allclose(value, ddp[key], atol=1e-6), (rank, key)
    assert not torch.equal(single["0.weight"], Prior().net.state_dict()["0.weight"])  # it did train
