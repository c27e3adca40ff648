"""Measure one benchmark case in this process and print one JSON line (run by `peer_compare.py`).

Runs in either library's virtual environment; it imports only torch and the library under test.
Memory is the peak above the warmed-up baseline: on CPU the resident set's high-water mark (VmHWM,
reset through /proc/self/clear_refs after warm-up, so the optimiser state allocated by the first
step is in the baseline), on CUDA torch's peak allocated bytes.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
from cases import CASES
from procmem import reset_peak, status_bytes


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _count_flops(case) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        case.run()
    return counter.get_total_flops()


def _version(impl: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"ours": "dream-dalle2", "peer": "dalle2-pytorch"}[impl])
    except PackageNotFoundError:
        return "unknown"


def _ours_paths(case, args) -> None:
    """Our opt-in paths, in place on the case's networks: `--fast` (sampling: `compile_for_inference`, i.e.
    torch.compile with inductor freezing; training: plain torch.compile) and `--sampling-max-batch`."""
    for module in case.modules:
        if args.sampling_max_batch is not None and hasattr(module, "sampling_max_batch"):
            module.sampling_max_batch = args.sampling_max_batch
        if args.fast and case.kind == "sample":
            from dalle2_core.nn import compile_for_inference

            compile_for_inference(module)
        elif args.fast:
            module.compile()


def build(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    extra = dict(channels_last=True) if args.channels_last else {}
    if "sample" in args.case:
        extra["steps"] = args.sample_steps
    if "decoder" in args.case and args.unet_option:
        extra["unet_options"] = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.unet_option)}
    return CASES[args.case](args.impl, args.device, args.precision, **extra)


def measure(args) -> dict:
    case = build(args)
    if args.compile:
        for module in case.modules:  # in place: the library's own calls go through the compiled forward
            module.compile()
    if args.impl == "ours":
        _ours_paths(case, args)
    for _ in range(args.warmup):
        case.run()
    _sync(args.device)
    gc.collect()
    if args.device.startswith("cuda"):
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = status_bytes("VmRSS")
        reset_peak()

    times = []
    for _ in range(args.iters):
        _sync(args.device)
        start = time.perf_counter()
        case.run()
        _sync(args.device)
        times.append(time.perf_counter() - start)

    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else status_bytes("VmHWM")
    result = dict(
        impl=args.impl,
        library_version=_version(args.impl),
        torch=torch.__version__,
        case=case.name,
        kind=case.kind,
        batch=case.batch,
        steps=case.steps,
        params=case.params,
        seconds=times,
        # per optimiser step for training, per denoising step for sampling
        seconds_per_step=statistics.median(times) / case.steps,
        peak_bytes=max(0, peak - base),
        baseline_bytes=base,
    )
    if args.flops:
        result["flops_per_step"] = _count_flops(case) / case.steps
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", required=True, choices=["ours", "peer"])
    p.add_argument("--case", required=True, choices=sorted(CASES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample-steps", type=int, default=8, help="denoising steps of one sampling run")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (the warm-up run compiles)")
    p.add_argument("--flops", action="store_true", help="count model FLOPs of one run (for MFU)")
    p.add_argument("--flops-only", action="store_true", help="only count the FLOPs of one eager run per step, no timing")
    p.add_argument("--fast", action="store_true", help="ours: the opt-in compiled path (sampling: compile_for_inference)")
    p.add_argument("--sampling-max-batch", type=int, default=None, help="ours: Unet.sampling_max_batch")
    p.add_argument("--unet-option", action="append", default=[], metavar="KEY=JSON", help="ours: extra Unet keyword")
    args = p.parse_args(argv)
    if min(args.iters, args.warmup, args.sample_steps) < 1:
        p.error(f"--iters, --warmup and --sample-steps must be >= 1, got {args.iters}, {args.warmup}, {args.sample_steps}")
    if args.flops_only:
        case = build(args)
        print(json.dumps(dict(case=case.name, flops_per_step=_count_flops(case) / case.steps)), flush=True)
        return
    print(json.dumps(measure(args)), flush=True)


if __name__ == "__main__":
    main()
