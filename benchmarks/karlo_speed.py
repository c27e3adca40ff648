"""Karlo-sized networks on this machine: seconds per step and peak memory, random weights from the real configs.

    python benchmarks/karlo_speed.py                          # CPU: fp32 and bf16, every measurement (~15 min, 2 cores)
    python benchmarks/karlo_speed.py --dtypes bf16 --skip-image
    python benchmarks/karlo_speed.py --device cuda --dtypes fp16 --offload --out-dir DIR   # what gpu_check.sh runs

Networks: Karlo v1-alpha's prior transformer (`StandardizedPrior`'s default `PriorTransformerConfig`), its
64 px decoder (`karlo_decoder_unet`, with `TextProj`) and its 64 -> 256 px super-resolution U-Net
(`karlo_super_res_unet`), built with their random initialisation (weights do not change the work done).
A *step* is one network call as sampling makes it: prior and decoder guided (cond and uncond in one
batch of 2 per image), super-resolution unguided (batch 1). The `image` row is one whole 256 px image
(prior 2 steps, decoder 2 steps, super-resolution 2 steps: enough for the peak, which does not grow with
steps) in a fresh process: peak resident set above the loaded weights and in total; with `--offload` the same
image through `KarloPipeline.offload(device)` (CLIP's text tower included), each network on the device only for
its stage. `dtype` is the
weights' and inputs' own dtype (no autocast). FLOPs are counted on `meta` tensors with
`torch.utils.flop_counter`. Every measurement runs in its own process; results go to
`results/karlo-<device>.md` and `.json` (or `--out-dir`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from procmem import reset_peak, status_bytes

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NETS = ("prior", "decoder", "super_res")
MiB = 2**20


def _networks(net: str, tiny: bool):
    """(module, inputs(batch, device, dtype) -> (args, kwargs), batch of one image's step)."""
    from dalle2_core.adm import AdmUnet, AdmUnetConfig, TextProj
    from dalle2_core.families.karlo.cascade import karlo_decoder_unet, karlo_super_res_unet
    from dalle2_core.prior.prior_transformer import PriorTransformer, PriorTransformerConfig

    if net == "prior":
        cfg = PriorTransformerConfig(embed_dim=16, heads=2, head_dim=8, depth=1, num_text_tokens=5) if tiny else PriorTransformerConfig()
        module = PriorTransformer(cfg)

        def inputs(b, device, dtype):
            g = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
            mask = torch.ones(b, cfg.num_text_tokens, dtype=torch.bool, device=device)
            t = torch.full((b,), 500, device=device)
            return (g(b, cfg.embed_dim), t), dict(text_embed=g(b, cfg.embed_dim), text_encodings=g(b, cfg.num_text_tokens, cfg.embed_dim),
                                                  text_mask=mask)

        return module, inputs, 2
    if net == "decoder":
        cfg = karlo_decoder_unet()
        if tiny:
            cfg = AdmUnetConfig.build(cfg, widths=(32, 64), layers_per_block=1, sample_size=8, norm_groups=8, levels=(False, True),
                                      head_dim=32, context_dim=32, time_embed_dim=32)
        module = AdmUnet(cfg)
        proj = TextProj(clip_dim=16, time_embed_dim=cfg.time_embed_dim, context_dim=cfg.conditioning.context_dim) if tiny else TextProj()

        def inputs(b, device, dtype):
            p = proj.to(device, dtype)
            g = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
            d = p.config.clip_dim
            with torch.no_grad():
                encoded = module.encode_context(**p(g(b, d), g(b, d), g(b, 77, d)))  # once per run, as sampling does
            s = cfg.sample_size
            return (g(b, cfg.in_channels, s, s), torch.full((b,), 500, device=device)), encoded

        return module, inputs, 2
    cfg = karlo_super_res_unet()
    if tiny:
        cfg = AdmUnetConfig.build(cfg, widths=(32, 64), layers_per_block=1, sample_size=16, norm_groups=8)
    module = AdmUnet(cfg)

    def inputs(b, device, dtype):
        s = cfg.sample_size
        return (torch.randn(b, cfg.in_channels, s, s, device=device, dtype=dtype), torch.full((b,), 500, device=device)), {}

    return module, inputs, 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_now(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return status_bytes("VmHWM")


def _reset_peak(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return reset_peak()


def count_flops(net: str, tiny: bool) -> int:
    """FLOPs of one step, counted on meta tensors (no memory, no time)."""
    from torch.utils.flop_counter import FlopCounterMode

    from dalle2_core.convert.materialize import build_on_meta

    holder = {}
    module = build_on_meta(lambda: holder.setdefault("m", _networks(net, tiny)))[0]
    _, inputs, batch = holder["m"]
    args, kwargs = inputs(batch, "meta", torch.float32)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*args, **kwargs)
    return counter.get_total_flops()


def step_worker(args) -> dict:
    """Seconds per step of one network: the median of `--iters` calls after one warm-up call."""
    dtype = DTYPES[args.dtype]
    module, inputs, batch = _networks(args.net, args.tiny)
    module = module.to(args.device, dtype).eval()
    call_args, kwargs = inputs(batch, args.device, dtype)
    times = []
    with torch.no_grad():
        for i in range(1 + args.iters):
            _sync(args.device)
            start = time.perf_counter()
            out = module(*call_args, **kwargs)
            _sync(args.device)
            times.append(time.perf_counter() - start)
            if i == 0:
                base = _reset_peak(args.device)
    finite = bool(torch.isfinite(out).all())
    steps = sorted(times[1:])
    return dict(net=args.net, dtype=args.dtype, batch=batch, seconds_per_step=steps[len(steps) // 2], seconds=times,
                peak_above_weights=_peak_now(args.device) - base, params=sum(p.numel() for p in module.parameters()),
                finite=finite)


def image_worker(args) -> dict:
    """One whole 256 px image, prior -> decoder -> super-resolution, 2 steps each: its peak memory."""
    from dalle2_core.families.karlo.cascade import KarloCascade
    from dalle2_core.families.karlo.defaults import karlo_prior_diffusion
    from dalle2_core.prior.standardized_prior import StandardizedPrior

    dtype = DTYPES[args.dtype]
    base0 = _reset_peak(args.device)
    prior = StandardizedPrior(diffusion=karlo_prior_diffusion()).to(args.device, dtype).eval()
    cascade = KarloCascade().to(args.device, dtype).eval()
    weights = sum(p.numel() * p.element_size() for m in (prior, cascade) for p in m.parameters())
    g = torch.Generator().manual_seed(0)
    text = lambda *s: torch.randn(*s, generator=g).to(args.device, dtype)  # noqa: E731
    text_embed, states, mask = text(1, 768), text(1, 77, 768), torch.ones(1, 77, dtype=torch.bool, device=args.device)
    empty = (text(1, 768), text(1, 77, 768), mask)
    base = _reset_peak(args.device)
    start = time.perf_counter()
    embed = prior.sample(text_embed, states, mask, steps=2, uncond=empty)
    image = cascade.sample(embed, states, mask, text_embed=text_embed, steps=(2, 2), uncond=empty)
    _sync(args.device)
    peak = _peak_now(args.device)
    total = peak - base0 if args.device.startswith("cuda") else peak  # CUDA: allocated; CPU: the whole resident set
    return dict(net="image", dtype=args.dtype, seconds=time.perf_counter() - start, weights_bytes=weights,
                peak_above_weights=peak - base, peak_total=total, shape=list(image.shape), finite=bool(torch.isfinite(image).all()))


def _pipeline(tiny: bool, dtype: torch.dtype, work: Path):
    """A KarloPipeline on the CPU: random full-size networks from the real configs (CLIP ViT-L/14's text tower
    included), or with `tiny` the tests' tiny Karlo (saved by diffusers, tests/fixtures/hub) converted into `work`."""
    if tiny:
        from dalle2_core.families.karlo.convert import convert_unclip
        from dalle2_core.pipeline import load_pipeline

        convert_unclip(HERE.parent / "tests" / "fixtures" / "hub" / "kakaobrain--karlo-v1-alpha", work / "model")
        return load_pipeline(work / "model", dtype=dtype)
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter
    from dalle2_core.families.karlo.cascade import KarloCascade
    from dalle2_core.families.karlo.defaults import karlo_prior_diffusion
    from dalle2_core.families.karlo.pipeline import KarloPipeline
    from dalle2_core.prior.standardized_prior import StandardizedPrior

    clip = HFClipAdapter(text=True, vision=False, normalize=False, zero_padding=False)
    return KarloPipeline(clip=clip, prior=StandardizedPrior(diffusion=karlo_prior_diffusion()), decoder=KarloCascade()).to(dtype).eval()


def offload_worker(args) -> dict:
    """One whole image through `KarloPipeline.offload(device)`: every network waits on the CPU and visits the
    device for its stage (text, prior, cascade), 2 steps each. The device's peak includes the visiting weights."""
    dtype = DTYPES[args.dtype]
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    with tempfile.TemporaryDirectory() as work:
        pipeline = _pipeline(args.tiny, dtype, Path(work)).offload(args.device)
        settings = pipeline.resolve(steps=(2, 2), prior_steps=2)
        base = _reset_peak(args.device)
        start = time.perf_counter()
        image = pipeline.generate(["a photo of a cat"], settings, generator=[torch.Generator(args.device).manual_seed(0)])
        _sync(args.device)
        peak = _peak_now(args.device)
    return dict(net="image (offload)", dtype=args.dtype, seconds=time.perf_counter() - start, weights_bytes=size(pipeline),
                largest_bytes=max(size(m) for m in (pipeline.clip, pipeline.prior, pipeline.decoder)),
                peak_above_weights=peak - base, peak_total=peak, shape=list(image.shape), finite=bool(torch.isfinite(image).all()))


def run(*argv: str, device: str) -> dict:
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if not device.startswith("cuda"):
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # freed tensors leave the resident set
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return dict(error=f"exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-3:]))
    return json.loads(lines[-1])


def table(rows: list[dict], args, peaks: dict, flops: dict, command: str) -> str:
    lines = [
        f"# Karlo-sized networks, {args.device}", "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}; {platform.platform()}; "
        f"{os.cpu_count()} logical cores, torch threads {args.threads}; load average {os.getloadavg()[0]:.1f} at the end",
        "- Step: one network call as sampling makes it (prior, decoder: cond + uncond of one image, batch 2; super-resolution: "
        "batch 1); median of the timed calls after one warm-up. Peak: above the loaded weights (CPU: resident-set high-water "
        "mark, CUDA: allocated). Image: prior, decoder and super-resolution 2 steps each, one 256 px image.",
        "- FLOPs counted with torch.utils.flop_counter on meta tensors; peak: " + "; ".join(f"{k} {v['how']}" for k, v in peaks.items()),
        "", "| network | dtype | params | batch | s/step | GFLOP/step | GFLOP/s | of peak | peak MiB above weights | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['net']} | {r['dtype']} | | | | | | | | {r['error']} |")
            continue
        if r["net"] == "image (offload)":
            where = "device peak" if args.device.startswith("cuda") else "peak above the loaded weights"
            note = (f"whole image {r['seconds']:.0f} s, weights offloaded: {where}; largest network {r['largest_bytes'] / MiB:,.0f} MiB "
                    f"of {r['weights_bytes'] / MiB:,.0f} MiB")
            peak = r["peak_above_weights"] / MiB
            lines.append(f"| image {r['shape'][-1]} px, offloaded | {r['dtype']} | | 1 | | | | | {peak:,.0f} | {note} |")
            continue
        if r["net"] == "image":
            note = (f"whole image {r['seconds']:.0f} s; weights {r['weights_bytes'] / MiB:,.0f} MiB, "
                    f"process peak {r['peak_total'] / MiB:,.0f} MiB")
            lines.append(f"| image 256 px | {r['dtype']} | | 1 | | | | | {r['peak_above_weights'] / MiB:,.0f} | {note} |")
            continue
        f = flops.get(r["net"])
        rate = f / r["seconds_per_step"] / 1e9 if f else None
        peak = peaks.get(r["dtype"], {}) if isinstance(peaks.get(r["dtype"]), dict) else {}
        frac = f"{rate / peak['gflops']:.0%}" if rate and peak.get("gflops") else "—"
        lines.append(f"| {r['net']} | {r['dtype']} | {r['params'] / 1e6:.0f} M | {r['batch']} | {r['seconds_per_step']:.2f} | "
                     f"{f / 1e9 if f else 0:,.0f} | {rate or 0:,.0f} | {frac} | {r['peak_above_weights'] / MiB:,.0f} | "
                     f"{'' if r['finite'] else 'non-finite output'} |")
    return "\n".join(lines) + "\n"


def gemm_peak(dtype: str, threads: int, device: str, n: int = 4096) -> dict:
    """The achievable dense peak: best of 6 runs of an n^3 matmul on these threads (CPU) or this GPU."""
    torch.set_num_threads(threads)
    a = torch.randn(n, n, device=device).to(DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(DTYPES[dtype])
    best = float("inf")
    for _ in range(6):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return dict(gflops=2 * n**3 / best / 1e9, how=f"{2 * n**3 / best / 1e9:,.0f} GFLOP/s (best of 6 {n}^3 {dtype} GEMMs)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-image", action="store_true")
    p.add_argument("--offload", action="store_true", help="also one whole image with the networks offloaded (Pipeline.offload)")
    p.add_argument("--tiny", action="store_true", help="tiny configs (seconds): checks that the script runs")
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--net", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](args)))
        return
    common = ["--device", args.device, "--threads", str(args.threads), "--iters", str(args.iters)] + (["--tiny"] if args.tiny else [])
    rows = []
    for dtype in args.dtypes:
        for net in args.nets:
            row = run("--worker", "step", "--net", net, "--dtype", dtype, *common, device=args.device)
            rows.append({"net": net, "dtype": dtype, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if not args.skip_image and not args.tiny:
            rows.append({"net": "image", "dtype": dtype, **run("--worker", "image", "--dtype", dtype, *common, device=args.device)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.offload:
            row = run("--worker", "offload", "--dtype", dtype, *common, device=args.device)
            rows.append({"net": "image (offload)", "dtype": dtype, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    flops = {net: count_flops(net, args.tiny) for net in args.nets}
    peaks = {d: gemm_peak(d, args.threads, args.device, 512 if args.tiny else 4096) for d in args.dtypes}
    command = "python benchmarks/karlo_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = table(rows, args, {d: v for d, v in peaks.items()}, flops, command.strip())
    name = f"karlo-{args.device.split(':')[0]}" + ("-tiny" if args.tiny else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.md").write_text(text)
    (args.out_dir / f"{name}.json").write_text(json.dumps(dict(rows=rows, flops=flops, peaks=peaks), indent=1) + "\n")
    if args.out_dir == HERE / "results":
        sys.path.insert(0, str(HERE))
        from readme_section import update_readme

        update_readme(name, text)
    print(text, end="")


WORKERS = {"step": step_worker, "image": image_worker, "offload": offload_worker}

if __name__ == "__main__":
    main()
