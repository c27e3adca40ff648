"""dalle2_core against DALLE2-pytorch 1.15.6: the same configurations, alternating runs, a table of ratios.

Each (implementation, case) runs in its own process (the two libraries live in different virtual
environments). Timing processes alternate A/B, B/A, ... per round and the table shows medians over
rounds; peak memory is taken once per (implementation, case) in a separate process with glibc told
to return large frees to the OS, so the resident-set high-water mark tracks live tensors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cases import CASES  # noqa: E402  (the case list; neither library is imported here)
from readme_section import update_readme  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s) by device name, for model FLOP utilisation
PEAK_TFLOPS_BF16 = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.2}
TARGET_TIME, TARGET_MEMORY = 0.5, 0.8


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(cpu=cpu, cores=os.cpu_count(), platform=platform.platform(), load=load)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../dalle2_core"], cwd=HERE, capture_output=True, text=True)
        return out.stdout.strip() + (" (+ uncommitted dalle2_core changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_worker(python: str, impl: str, case: str, args, *, measure_memory: bool) -> dict:
    cmd = [python, str(HERE / "worker.py"), "--impl", impl, "--case", case, "--device", args.device,
           "--precision", args.precision, "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--iters", str(1 if measure_memory else args.iters), "--sample-steps", str(args.sample_steps)]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.compile:
        cmd.append("--compile")
    if impl == "ours":
        cmd += _ours_options(args)
    return _run(cmd, impl, case, args, measure_memory)


def _ours_options(args) -> list[str]:
    """Our opt-in paths (the peer has none of them): the compiled path, a sampling row cap, unet options."""
    out = ["--fast"] if args.ours_fast else []
    if args.ours_sampling_max_batch is not None:
        out += ["--sampling-max-batch", str(args.ours_sampling_max_batch)]
    for option in args.ours_unet_option:
        out += ["--unet-option", option]
    return out


def count_flops(python: str, case: str, args) -> dict:
    """FLOPs per step of our network on this case, counted by torch.utils.flop_counter over one eager run."""
    cmd = [python, str(HERE / "worker.py"), "--impl", "ours", "--case", case, "--device", args.device, "--precision",
           args.precision, "--threads", str(args.threads), "--sample-steps", str(args.sample_steps), "--flops-only"]
    cmd += [a for o in args.ours_unet_option for a in ("--unet-option", o)]
    return _run(cmd, "ours", case, args, False)


def _run(cmd: list[str], impl: str, case: str, args, measure_memory: bool) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    # spinning OpenMP workers on an oversubscribed CPU turn every small op into a scheduler wait
    # (a 3-token prior step measured 60 ms passive vs 0.14-1.6 s spinning on the shared 2-core box)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if measure_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # large tensors via mmap: freed memory leaves the RSS
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(impl=impl, case=case, error=f"exit {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


def collect(args, log) -> dict:
    pythons = dict(ours=args.ours_python, peer=args.peer_python)
    results = {case: dict(ours=[], peer=[], memory={}) for case in args.cases}
    for r in range(args.rounds):
        for case in args.cases:
            order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
            for impl in order:
                res = run_worker(pythons[impl], impl, case, args, measure_memory=False)
                results[case][impl].append(res)
                log(f"round {r + 1}/{args.rounds} {case:26s} {impl:4s} " + _brief(res))
    if not args.skip_memory:
        for case in args.cases:
            for impl in ("ours", "peer"):
                res = run_worker(pythons[impl], impl, case, args, measure_memory=True)
                results[case]["memory"][impl] = res
                log(f"memory {case:26s} {impl:4s} " + _brief(res))
    if not args.skip_flops:
        for case in args.cases:
            results[case]["flops"] = count_flops(args.ours_python, case, args)
            log(f"flops  {case:26s} ours " + str(results[case]["flops"].get("flops_per_step", results[case]["flops"].get("error"))))
    return results


def _brief(res: dict) -> str:
    if "error" in res:
        return "FAILED " + res["error"]
    return f"{res['seconds_per_step']:.3f} s/step, peak +{res['peak_bytes'] / 2**20:.0f} MiB"


def _median(runs: list[dict], key: str):
    values = [r[key] for r in runs if "error" not in r]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(x, spec=".3f", none="—"):
    return none if x is None else format(x, spec)


def summarise(results: dict, args) -> list[dict]:
    rows = []
    for case, res in results.items():
        ours_t, peer_t = _median(res["ours"], "seconds_per_step"), _median(res["peer"], "seconds_per_step")
        # the ratio of each round's adjacent pair, then the median: load drifts between rounds
        per_round = [o["seconds_per_step"] / p["seconds_per_step"] for o, p in zip(res["ours"], res["peer"])
                     if "error" not in o and "error" not in p]
        mem = res["memory"]
        ours_m = mem.get("ours", {}).get("peak_bytes") if "error" not in mem.get("ours", {"error": 1}) else None
        peer_m = mem.get("peer", {}).get("peak_bytes") if "error" not in mem.get("peer", {"error": 1}) else None
        any_ok = next((r for r in res["ours"] + res["peer"] if "error" not in r), {})
        params = {impl: next((r["params"] for r in res[impl] if "error" not in r), None) for impl in ("ours", "peer")}
        row = dict(case=case, kind=any_ok.get("kind"), batch=any_ok.get("batch"), params=params,
                   ours_s=ours_t, peer_s=peer_t, time_ratio=statistics.median(per_round) if per_round else None,
                   ours_mem=ours_m, peer_mem=peer_m, mem_ratio=_ratio(ours_m, peer_m),
                   errors=[r["error"] for r in res["ours"] + res["peer"] + list(mem.values()) if "error" in r])
        flops = res.get("flops", {}).get("flops_per_step")
        row["flops_per_step"] = flops
        if ours_t:
            row["ours_images_per_s"] = row["batch"] / ours_t if row["kind"] == "train" else row["batch"] / (ours_t * any_ok.get("steps", 1))
        if flops and ours_t:
            row["ours_tflops"] = flops / ours_t / 1e12
            if args.peak_tflops:
                row["ours_mfu"] = row["ours_tflops"] / args.peak_tflops
        rows.append(row)
    return rows


def markdown(rows: list[dict], results: dict, args, info: dict) -> str:
    versions = {}
    for res in results.values():
        for impl in ("ours", "peer"):
            for r in res[impl]:
                if "error" not in r:
                    versions[impl] = f"{r['library_version']} (torch {r['torch']})"
    lines = [
        f"# dalle2_core vs DALLE2-pytorch 1.15.6 — {_setting(args, ', ')}",
        "",
        f"- Command: `{info['command']}`",
        f"- Date: {info['date']}; dalle2_core commit {info['commit']}",
        f"- Machine: {info['machine']['cpu']}, {info['machine']['cores']} logical cores, {info['machine']['platform']}; "
        f"load average at start {_load(info['machine']['load'])}, at end {_load(info['load_end'])}",
        f"- Threads: torch.set_num_threads({args.threads}); rounds: {args.rounds} (A/B order alternates), "
        f"{args.iters} timed run(s) after {args.warmup} warm-up per process; s/step are medians over rounds, the time "
        "ratio is the median of each round's ours/peer ratio; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}",
        f"- ours: dream-dalle2 {versions.get('ours', '?')}; peer: dalle2-pytorch {versions.get('peer', '?')}",
        "- Training: one AdamW step (forward, backward, update) on precomputed CLIP embeddings. Sampling: time per "
        f"denoising step of a {args.sample_steps}-step guided DDPM sampling run, cond_scale 3, one-off conditioning work "
        "included (amortised over the steps). Peak memory: resident-set (CPU) or allocated (CUDA) "
        "high-water mark above the warmed-up process (weights and optimiser state excluded), one process each.",
        f"- Targets: time ratio ≤ {TARGET_TIME}, memory ratio ≤ {TARGET_MEMORY} (ours / peer).",
    ]
    if args.shared_machine_note:
        lines.append(f"- Note: {args.shared_machine_note}")
    lines.append(f"- ours runs: {_ours_description(args)}; the peer runs its only (eager) path")
    lines.append(f"- FLOPs per step: `torch.utils.flop_counter.FlopCounterMode` over one eager run of ours (matmuls, "
                 f"convolutions, attention). Peak: {info['peak']}. Fraction of peak = FLOPs per step / ours s/step / peak.")
    head = ("| case | kind | batch | params ours / peer | ours s/step | peer s/step | time ratio "
            "| ours peak MiB | peer peak MiB | memory ratio | targets | GFLOP/step | ours img/s | ours GFLOP/s | of peak |")
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        met = []
        if r["time_ratio"] is not None:
            met.append("time ✓" if r["time_ratio"] <= TARGET_TIME else "time ✗")
        if r["mem_ratio"] is not None:
            met.append("mem ✓" if r["mem_ratio"] <= TARGET_MEMORY else "mem ✗")
        params = " / ".join(_fmt(r["params"][i] / 1e6 if r["params"][i] else None, ".2f") + "M" for i in ("ours", "peer"))
        mib = lambda b: None if b is None else b / 2**20  # noqa: E731
        cells = [r["case"], r["kind"] or "—", str(r["batch"] or "—"), params, _fmt(r["ours_s"]), _fmt(r["peer_s"]),
                 _fmt(r["time_ratio"], ".2f"), _fmt(mib(r["ours_mem"]), ".0f"), _fmt(mib(r["peer_mem"]), ".0f"),
                 _fmt(r["mem_ratio"], ".2f"), ", ".join(met) or "—"]
        gflops = lambda x: None if x is None else x * 1e3  # noqa: E731
        cells += [_fmt(gflops(r["flops_per_step"] and r["flops_per_step"] / 1e12), ".1f"), _fmt(r.get("ours_images_per_s"), ".2f"),
                  _fmt(gflops(r.get("ours_tflops")), ".0f"), _fmt(r.get("ours_mfu"), ".1%")]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [(r["case"], e) for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Failures:"] + [f"- {case}: {e}" for case, e in errors]
    return "\n".join(lines) + "\n"


def _setting(args, sep: str) -> str:
    """The device and every option that changes what both libraries run: "cpu, bf16, compiled"."""
    parts = [args.device.split(":")[0]]
    parts += [args.precision] if args.precision != "fp32" or sep != "-" else []
    parts += ["compiled"] if args.compile else []
    parts += ["channels-last"] if args.channels_last else []
    parts += ["ours-fast"] if args.ours_fast else []
    parts += [f"ours-max-batch{args.ours_sampling_max_batch}"] if args.ours_sampling_max_batch is not None else []
    parts += ["ours-" + o.replace("=", "-").lower() for o in args.ours_unet_option]
    return sep.join(parts)


def _ours_description(args) -> str:
    parts = ["compile_for_inference (torch.compile, inductor freezing) on sampling, torch.compile on training"] if args.ours_fast else []
    if args.ours_sampling_max_batch is not None:
        parts.append(f"Unet.sampling_max_batch = {args.ours_sampling_max_batch} (guided batches run in chunks of that many rows)")
    parts += [f"Unet option {o}" for o in args.ours_unet_option]
    return "; ".join(parts) or "the default path (eager, as shipped)"


def _load(load) -> str:
    return "unknown" if not load else "/".join(f"{x:.1f}" for x in load)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours-python", default=sys.executable, help="python of the environment with dalle2_core")
    p.add_argument("--peer-python", default="/tmp/peervenv/bin/python", help="python with dalle2-pytorch==1.15.6")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE",
                   help=f"default: all ({', '.join(CASES)})")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample-steps", type=int, default=8, help="denoising steps per sampling run (time is per step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the networks in both libraries (warm-up compiles)")
    p.add_argument("--channels-last", action="store_true", help="models and images in channels_last, both libraries")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-flops", action="store_true", help="do not count FLOPs (one more eager run per case)")
    p.add_argument("--ours-fast", action="store_true", help="ours only: the opt-in compiled path (the peer has none)")
    p.add_argument("--ours-sampling-max-batch", type=int, default=None, help="ours only: Unet.sampling_max_batch")
    p.add_argument("--ours-unet-option", action="append", default=[], metavar="KEY=JSON",
                   help="ours only: an extra Unet keyword for the decoder cases, e.g. selective_recompute=true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for the fraction of peak (default: GPU by name; CPU: a measured GEMM)")
    p.add_argument("--shared-machine-note", default="")
    p.add_argument("--out", type=Path, default=None, help="markdown table (default: benchmarks/results/<device>-latest.md)")
    args = p.parse_args(argv)
    if min(args.rounds, args.iters, args.warmup, args.sample_steps) < 1:
        p.error("--rounds, --iters, --warmup and --sample-steps must be >= 1")
    peak_note = f"{args.peak_tflops} TFLOP/s (given)" if args.peak_tflops else None
    if args.device.startswith("cuda") and args.peak_tflops is None:
        args.peak_tflops = _gpu_peak(args.ours_python)
        peak_note = f"{args.peak_tflops} TFLOP/s, the card's dense bf16 peak by name"
    elif args.peak_tflops is None:
        args.peak_tflops, peak_note = _cpu_peak(args.ours_python, args.threads, args.precision)
    out = args.out or HERE / "results" / f"{_setting(args, '-')}-latest.md"

    info = dict(command=os.environ.get("BENCH_COMMAND") or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                date=datetime.datetime.now().isoformat(timespec="minutes"), commit=git_commit(), machine=machine(),
                peak=peak_note)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = collect(args, log)
    info["load_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = summarise(results, args)
    text = markdown(rows, results, args, info)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(dict(info=info, results=results), indent=1))
    if args.out is None:  # the default results file: its table in benchmarks/README.md too
        update_readme(out.stem, text)
    print(text)


CPU_PEAK_PROBE = """
import json, time, torch
torch.set_num_threads({threads})
dtype = {dtype}
a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
best = float("inf")
for _ in range(6):
    start = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - start)
print(json.dumps(2 * 4096**3 / best / 1e12))
"""


def _cpu_peak(python: str, threads: int, precision: str) -> tuple[float | None, str]:
    """The cores' achievable peak: the best of 6 runs of a 4096^3 GEMM (MKL / oneDNN) on the same threads."""
    dtype = "torch.bfloat16" if precision == "bf16" else "torch.float32"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([python, "-c", CPU_PEAK_PROBE.format(threads=threads, dtype=dtype)], capture_output=True, text=True, env=env)
    try:
        peak = float(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None, "unknown (the GEMM probe failed)"
    note = (f"{peak * 1e3:.0f} GFLOP/s, measured at the start: the best of 6 runs of a 4096x4096x4096 "
            f"{precision} torch.mm on {threads} threads (the cores' achievable dense peak; a shared machine lowers it)")
    return peak, note


def _gpu_peak(python: str) -> float | None:
    probe = "import torch; print(torch.cuda.get_device_name())"
    name = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
    return next((peak for key, peak in PEAK_TFLOPS_BF16.items() if key in name), None)


if __name__ == "__main__":
    main()
