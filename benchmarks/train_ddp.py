"""Data-parallel step time on CPU: DDP (bucketed all-reduce overlapped with backward) against the
per-parameter all-reduce after backward that the trainers used before, 2 gloo processes.

    python benchmarks/train_ddp.py                       # LAION-shaped decoder, 64 px, batch 4 per process
    python benchmarks/train_ddp.py --steps 3 --threads 1

Both variants run the same step: decoder loss, backward, gradient mean over the processes, gradient
clipping, AdamW. Rounds alternate the order (DDP first, then the old way first, ...); each round
builds the decoder, warms up one step and times `--steps`. Writes benchmarks/results/train-ddp.md
and .json (the median over rounds of each variant's mean step time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from cases import DECODER_OPTIONS, LAION_SMALL_UNET, LIBRARY_EXTRAS, _inputs  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _old_all_reduce(net: torch.nn.Module) -> None:
    """The trainers' former data parallelism: after backward, one blocking all-reduce per parameter."""
    world = dist.get_world_size()
    for p in net.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _decoder():
    from dalle2_core.decoder import Decoder, Unet

    torch.manual_seed(0)
    unet = Unet(**{**LAION_SMALL_UNET, **LIBRARY_EXTRAS[("ours", "laion")]})
    return Decoder(unet=unet, image_size=64, timesteps=1000, **DECODER_OPTIONS).train()


def _time(variant: str, steps: int, batch: int, rank: int) -> float:
    from dalle2_core.train import distributed

    decoder = _decoder()
    unet = decoder.unets[0]
    forward = distributed.replicate(decoder, unet) if variant == "ddp" else decoder
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = _inputs(batch, 64, "cpu", text=True)
    images = x.pop("images")
    times = []
    for i in range(steps + 1):
        dist.barrier()
        start = time.perf_counter()
        forward(images, **x).backward()
        if variant == "old":
            _old_all_reduce(unet)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step allocates the optimizer state and DDP's buckets
            times.append(time.perf_counter() - start)
    return statistics.mean(times)


def _worker(rank: int, args, init: str, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        rounds = []
        for r in range(args.rounds):
            order = ("ddp", "old") if r % 2 == 0 else ("old", "ddp")
            rounds.append({variant: _time(variant, args.steps, args.batch, rank) for variant in order})
        if rank == 0:
            Path(out).write_text(json.dumps(rounds))
    finally:
        dist.destroy_process_group()


def _write(args, rounds: list[dict], load: tuple) -> dict:
    median = {v: statistics.median(r[v] for r in rounds) for v in ("ddp", "old")}
    params = sum(p.numel() for p in _decoder().unets[0].parameters())
    result = dict(date=datetime.now().isoformat(timespec="minutes"), command=" ".join(["python", *sys.argv]),
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
                  load_average_start=load, load_average_end=os.getloadavg(), torch=torch.__version__, threads=args.threads,
                  processes=2, batch_per_process=args.batch, unet_params=params, rounds=rounds, median_s_per_step=median,
                  ratio_ddp_over_old=median["ddp"] / median["old"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train-ddp.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "train-ddp.md").write_text(
        "# Data-parallel step time, 2 CPU processes (gloo)\n\n"
        f"- Command: `{result['command']}`\n- Date: {result['date']}; torch {result['torch']}; {result['machine']}; "
        f"load average at start {load[0]:.1f}, at end {result['load_average_end'][0]:.1f}\n"
        f"- LAION-shaped decoder unet ({params / 1e6:.2f}M parameters, `benchmarks/cases.py` LAION_SMALL_UNET), 64 px, "
        f"batch {args.batch} per process, {args.threads} thread(s) per process, {args.rounds} rounds x {args.steps} steps\n\n"
        "| variant | s/step (median of rounds) |\n|---|---|\n"
        f"| DDP (bucketed, overlapped with backward) | {median['ddp']:.3f} |\n"
        f"| per-parameter all-reduce after backward (before) | {median['old']:.3f} |\n"
        f"| ratio DDP / before | {result['ratio_ddp_over_old']:.2f} |\n"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rounds.json")
        mp.spawn(_worker, args=(args, os.path.join(tmp, "init"), out), nprocs=2, join=True)
        result = _write(args, json.loads(Path(out).read_text()), load)
    print(json.dumps(result["median_s_per_step"]), f"ratio {result['ratio_ddp_over_old']:.2f}")


if __name__ == "__main__":
    main()
