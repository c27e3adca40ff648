"""Where one sampling step of ours spends its time: torch.profiler over one guided forward, grouped by kind.

    python benchmarks/profile_step.py                                   # both decoder cases, eager and compiled
    python benchmarks/profile_step.py --cases decoder_sample_spec_64 --paths fast

One network call as a sampling step makes it (batch 2 x 4: both guidance branches), after warm-up (the
compiled path compiles there). Each op's self time is put in a group (convolution, matmul/attention,
the rest) and the top ops are listed; the achieved FLOP rate of the convolutions is their FLOPs
(`torch.utils.flop_counter`) over their self time. Writes results/profile-step.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cases import _unet_kwargs  # noqa: E402
from readme_section import update_readme  # noqa: E402

GROUPS = {"convolution": ("conv",), "matmul / attention": ("mm", "addmm", "bmm", "linear", "attention", "matmul", "einsum")}


def _inputs(config: str, batch: int = 8):
    g = torch.Generator().manual_seed(0)
    kw = dict(image_embed=torch.randn(batch, 512, generator=g), cond_drop_mask=torch.arange(batch) >= batch // 2)
    if config == "laion":
        enc = torch.randn(batch, 77, 512, generator=g)
        enc[:, 20:] = 0
        kw["text_encodings"] = enc
    return torch.randn(batch, 3, 64, 64, generator=g), torch.randint(0, 8, (batch,), generator=g), kw


def _group(name: str) -> str:
    low = name.lower()
    if low.startswith("## call compiledfxgraph") or "compiled" in low or "torchdynamo" in low:
        return "compiled kernels (fused elementwise, norms)"
    return next((g for g, keys in GROUPS.items() if any(k in low for k in keys)), "other (norms, elementwise, copies)")


def profile(case: str, path: str) -> tuple[dict, list, float, float]:
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    from dalle2_core import Unet
    from dalle2_core.nn import compile_for_inference

    config = case.split("_")[2]
    torch.manual_seed(0)
    unet = Unet(**_unet_kwargs("ours", config)).eval()
    x, t, kw = _inputs(config)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, t, **kw)
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "conv" in str(k))
    if path == "fast":
        compile_for_inference(unet)
    with torch.no_grad():
        for _ in range(2):
            unet(x, t, **kw)
        with torch_profile() as prof:
            unet(x, t, **kw)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    groups: dict[str, float] = {}
    for e in events:
        groups[_group(e.key)] = groups.get(_group(e.key), 0.0) + e.self_cpu_time_total / 1e6
    conv_s = sum(e.self_cpu_time_total for e in events if _group(e.key) == "convolution") / 1e6
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
    return groups, [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in top], total, conv_flops / conv_s / 1e9 if conv_s else 0.0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["decoder_sample_spec_64", "decoder_sample_laion_64"])
    p.add_argument("--paths", nargs="+", default=["eager", "fast"], choices=["eager", "fast"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    lines = ["# Profile of one sampling step (ours, CPU)", "",
             f"- Command: `{' '.join(['python benchmarks/profile_step.py', *given])}`",
             f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}; threads {args.threads}; "
             f"load average {os.getloadavg()[0]:.1f}",
             "- One guided forward (batch 8 = 4 images x 2 branches, 64 px), torch.profiler self CPU time by op; `fast` is "
             "`compile_for_inference`. Conv GFLOP/s: the convolutions' FLOPs (flop_counter) over their self time.", "",
             "| case | path | step s | convolution | matmul / attention | compiled kernels | other | conv GFLOP/s | top ops (calls, s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in args.cases:
        for path in args.paths:
            groups, top, total, conv_rate = profile(case, path)
            share = lambda g, groups=groups, total=total: f"{groups.get(g, 0.0) / total:.0%}"  # noqa: E731
            tops = "; ".join(f"{k} ({n}, {s:.2f})" for k, n, s in top)
            lines.append(f"| {case} | {path} | {total:.2f} | {share('convolution')} | {share('matmul / attention')} | "
                         f"{share('compiled kernels (fused elementwise, norms)')} | {share('other (norms, elementwise, copies)')} | "
                         f"{conv_rate:.0f} | {tops} |")
            print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "profile-step.md").write_text(text)
    update_readme("profile-step", text)
    print(text, end="")


if __name__ == "__main__":
    main()
