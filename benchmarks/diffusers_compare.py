"""dalle2_core against diffusers, one network call at a time: Karlo and Kandinsky 2.2 networks at full size, same weights.

    python benchmarks/diffusers_compare.py                      # CPU, fp32 and bf16, every network (about 2 hours on 2 cores)
    python benchmarks/diffusers_compare.py --nets karlo_decoder kandinsky_unet --ours-paths eager channels_last compile

diffusers lives in its own virtual environment (`--diffusers-python`, default /work/scratch/hf/bin/python; never a
dependency of this project). For each network, diffusers builds it from the real config (tests/fixtures/*/configs),
draws its weights and writes them with `save_pretrained`; each side then loads that folder its own way (diffusers:
`from_pretrained`; ours: the family converter's key map through `convert.materialize`) in a fresh process, warms up
once and times `--iters` calls. Rounds alternate which side goes first; the ratio is taken per round (adjacent
processes) and its median reported. The first round's warm-up outputs are compared before more rounds run. Peak
memory is taken once per side in processes of its own with glibc told to return large frees, above the warmed-up
resident set (which holds the weights). Results: results/diffusers-<device>[-<paths>].md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from diffusers_worker import NETS  # noqa: E402
from readme_section import update_readme  # noqa: E402

# one call as sampling makes it: the batch, and what a row is
BATCH = {"karlo_prior": 2, "karlo_decoder": 2, "karlo_super_res": 1, "kandinsky_prior": 2, "kandinsky_unet": 2, "movq_decode": 1}
WHAT = {
    "karlo_prior": "Karlo prior transformer (1.0 B), cond + uncond",
    "karlo_decoder": "Karlo 64 px decoder U-Net (885 M), cond + uncond",
    "karlo_super_res": "Karlo 64 -> 256 px super-resolution U-Net (692 M)",
    "kandinsky_prior": "Kandinsky 2.2 prior transformer, cond + uncond",
    "kandinsky_unet": "Kandinsky 2.2 decoder U-Net at 512 px (64 x 64 latents), cond + uncond",
    "movq_decode": "Kandinsky 2.2 MoVQ decode to 512 px",
}
DECODER_UNETS = ("karlo_decoder", "kandinsky_unet")
TARGET = {"bf16": 0.8, "fp32": 1.0}  # ours / diffusers per call on the decoder U-Nets; memory no higher
FP32_TOLERANCE = 1e-4  # max |ours - diffusers| / max |diffusers|: float32 rounding of the same sums in another order
MiB, GiB = 2**20, 2**30


def run_worker(python: str, argv: list[str], args, *, memory: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
           "DIFFUSERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP workers on a shared CPU turn every op into a wait
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # large tensors via mmap: freed memory leaves the resident set
    done = subprocess.run([python, str(HERE / "diffusers_worker.py"), *argv], capture_output=True, text=True, env=env, cwd=HERE.parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return dict(error=f"exit {done.returncode}: " + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]))
    return json.loads(lines[-1])


def sides(args) -> list[tuple[str, str]]:
    """(side, path): ours once per path, then diffusers."""
    return [("ours", p) for p in args.ours_paths] + [("diffusers", "")]


def _label(side: str, path: str) -> str:
    return side if side == "diffusers" else f"ours-{path}"


def time_argv(net: str, dtype: str, side: str, path: str, args, iters: int) -> list[str]:
    out = ["time", "--net", net, "--work", str(args.work), "--side", side, "--dtype", dtype, "--device", args.device,
           "--threads", str(args.threads), "--iters", str(iters)]
    return out + (["--path", path] if side == "ours" else [])


def _load_out(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))["out"]


def check_outputs(net: str, dtype: str, args) -> dict:
    """Each ours path against diffusers on the first round's warm-up outputs. fp32: within `FP32_TOLERANCE` of the output's
    scale. bf16 / autocast: no further from diffusers' than twice diffusers' own rounding error (its bf16 output against its
    fp32 output on the same inputs): two independent roundings of one computation."""
    folder = args.work / net
    theirs = folder / f"out-diffusers-{dtype}.safetensors"
    if not theirs.is_file():
        return {}
    ref = _load_out(theirs)
    result = {}
    for side, path in sides(args)[:-1]:
        mine = folder / f"out-{_label(side, path)}-{dtype}.safetensors"
        if not mine.is_file():
            continue
        ours = _load_out(mine)
        if ours.shape != ref.shape:
            result[path] = dict(ok=False, note=f"shape {tuple(ours.shape)} against diffusers' {tuple(ref.shape)}")
            continue
        diff, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
        row = dict(max_abs_diff=diff, max_abs=scale)
        fp32 = folder / "out-diffusers-fp32.safetensors"
        if dtype == "fp32":
            row.update(tolerance=FP32_TOLERANCE * scale, ok=diff <= FP32_TOLERANCE * scale)
        elif fp32.is_file():
            own = (ref - _load_out(fp32)).abs().max().item()
            row.update(tolerance=2 * own, diffusers_own_error=own, ok=diff <= 2 * own)
        else:
            row.update(tolerance=None, ok=None, note="no fp32 output to scale the tolerance")
        result[path] = row
    return result


def reference_output(net: str, dtype: str, args, log) -> None:
    """diffusers' float32 output, which scales the tolerance of the other dtypes: one untimed call when fp32 is not measured."""
    saved = args.work / net / "out-diffusers-fp32.safetensors"
    if dtype == "fp32" or saved.is_file():
        return
    got = run_worker(args.diffusers_python, time_argv(net, "fp32", "diffusers", "", args, 1) + ["--save-output", str(saved)], args)
    log(f"{net} fp32 reference output (diffusers): " + ("FAILED " + got["error"] if "error" in got else "saved"))


def measure_net(net: str, args, log) -> dict:
    res = dict(net=net, batch=BATCH[net], dtypes={})
    if not (args.work / net / "model").is_dir():
        made = run_worker(args.diffusers_python, ["make", "--net", net, "--work", str(args.work), "--seed", "0"]
                          + (["--tiny"] if args.tiny else []), args)
        log(f"made {net}: {made}")
        if "error" in made:
            res["error"] = made["error"]
            return res
        res["params"] = made["params"]
    rounds = min(args.rounds, args.rounds_super_res) if net == "karlo_super_res" else args.rounds
    res["rounds"] = rounds
    failed = {}
    for dtype in args.dtypes:
        res["dtypes"][dtype] = dict(runs={_label(*s): [] for s in sides(args)}, memory={}, check={})
    for r in range(rounds):
        for dtype in args.dtypes:
            entry = res["dtypes"][dtype]
            order = sides(args)
            order = order[r % len(order):] + order[: r % len(order)]  # rotate who goes first
            for side, path in order:
                label = _label(side, path)
                if failed.get((dtype, path)):
                    continue
                argv = time_argv(net, dtype, side, path, args, args.iters)
                if r == 0:
                    argv += ["--save-output", str(args.work / net / f"out-{label}-{dtype}.safetensors")]
                got = run_worker(args.diffusers_python if side == "diffusers" else args.ours_python, argv, args)
                entry["runs"][label].append(got)
                log(f"round {r + 1}/{rounds} {net} {dtype} {label}: " + _brief(got))
            if r == 0:
                reference_output(net, dtype, args, log)
                entry["check"] = check_outputs(net, dtype, args)
                for path, c in entry["check"].items():
                    log(f"check {net} {dtype} ours-{path}: {c}")
                    failed[(dtype, path)] = c.get("ok") is False
    cuda = args.device.startswith("cuda")  # the caching allocator's peak in the timed runs: no processes of its own
    if not args.skip_memory:
        for dtype in args.dtypes:
            for side, path in sides(args):
                label = _label(side, path)
                python = args.diffusers_python if side == "diffusers" else args.ours_python
                if cuda:
                    got = next(iter(_ok(res["dtypes"][dtype]["runs"][label])), dict(error="no timed run"))
                else:
                    got = run_worker(python, time_argv(net, dtype, side, path, args, 1), args, memory=True)
                res["dtypes"][dtype]["memory"][label] = got
                log(f"memory {net} {dtype} {label}: " + _brief(got))
    return res


def _brief(res: dict) -> str:
    if "error" in res:
        return "FAILED " + res["error"]
    return (f"{res['seconds_per_call']:.3f} s/call (warm-up {res['warmup_seconds'][0]:.1f} s, load {res['load_seconds']:.1f} s), "
            f"peak +{res['peak_above_baseline'] / MiB:.0f} MiB, process {(res['process_peak_bytes'] or 0) / GiB:.2f} GiB")


def _ok(runs: list[dict]) -> list[dict]:
    return [r for r in runs if "error" not in r]


def summarise(results: list[dict], args) -> list[dict]:
    rows = []
    for res in results:
        for dtype, entry in res.get("dtypes", {}).items():
            theirs = entry["runs"].get("diffusers", [])
            for side, path in sides(args)[:-1]:
                label = _label(side, path)
                mine = entry["runs"][label]
                per_round = [o["seconds_per_call"] / t["seconds_per_call"] for o, t in zip(mine, theirs)
                             if "error" not in o and "error" not in t]
                med = lambda runs: statistics.median([r["seconds_per_call"] for r in _ok(runs)]) if _ok(runs) else None  # noqa: E731
                mem_o, mem_t = entry["memory"].get(label, {}), entry["memory"].get("diffusers", {})
                peak = lambda m: None if "error" in m or not m else m["peak_above_baseline"]  # noqa: E731
                total = lambda m: None if "error" in m or not m else m.get("process_peak_bytes")  # noqa: E731
                once = [r["once_per_run_seconds"] for r in _ok(mine)]
                rows.append(dict(
                    net=res["net"], dtype=dtype, path=path, batch=res["batch"], ours_s=med(mine), diffusers_s=med(theirs),
                    per_round=per_round, ratio=statistics.median(per_round) if per_round else None, ours_peak=peak(mem_o),
                    diffusers_peak=peak(mem_t), ours_total=total(mem_o), diffusers_total=total(mem_t),
                    weights=next((r["weights_bytes"] for r in _ok(mine)), None), once=statistics.median(once) if once else None,
                    check=entry["check"].get(path, {}),
                    errors=[r["error"] for r in mine + theirs + [mem_o, mem_t] if "error" in r]
                    + ([res["error"]] if "error" in res else []),
                ))
    return rows


def _f(x, spec: str, none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _target(row: dict) -> str:
    if row["net"] not in DECODER_UNETS or row["dtype"] not in TARGET or row["ratio"] is None:
        return ""
    marks = ["time ✓" if row["ratio"] <= TARGET[row["dtype"]] else "time ✗"]
    if row["ours_peak"] is not None and row["diffusers_peak"] is not None:
        marks.append("mem ✓" if row["ours_peak"] <= row["diffusers_peak"] else "mem ✗")
    return f"≤ {TARGET[row['dtype']]}: " + ", ".join(marks)


def _check_cell(c: dict) -> str:
    if not c:
        return "—"
    if "max_abs_diff" not in c:
        return "✗ " + c.get("note", "")
    mark = {True: "✓", False: "✗", None: "?"}[c.get("ok")]
    tol = "" if c.get("tolerance") is None else f" ≤ {c['tolerance']:.1e}"
    return f"{mark} {c['max_abs_diff']:.1e}{tol} (of {c['max_abs']:.2g})"


def markdown(rows: list[dict], args, info: dict) -> str:
    lines = [
        f"# dalle2_core vs diffusers {info['diffusers']}, per network call ({args.device}, "
        f"{'tiny configs' if args.tiny else 'full size'}, same weights)", "",
        f"- Command: `{info['command']}`",
        f"- Date: {info['date']}; dalle2_core commit {info['commit']}; torch {info['torch']} on both sides",
        f"- Machine: {info['cpu']}, {os.cpu_count()} logical cores, {platform.platform()}; {info['free']}; load average at start "
        f"{info['load_start']}, at end {info['load_end']}",
        f"- Each (side, network, dtype) in a fresh process: load, {args.warmup} warm-up call, {args.iters} timed call(s) (median); "
        f"{args.rounds} rounds ({min(args.rounds, args.rounds_super_res)} for the super-resolution U-Net), the side that goes first "
        "rotating; s/call are medians over rounds, the ratio is the median of each round's ours / diffusers. "
        f"torch.set_num_threads({args.threads}), OMP_WAIT_POLICY=PASSIVE.",
        "- Same weights: diffusers builds each network from the real config, draws N(0, 0.02) weights (norm gains 1) and saves "
        "them with `save_pretrained`; ours reads that folder through the family converter's key map (`convert.materialize`). "
        "bf16: both sides' weights and inputs in bfloat16 (no autocast); autocast: float32 weights under bf16 autocast.",
        "- Ours calls each network as its samplers do: a U-Net's context keys and values are projected once per sampling run "
        "(`encode_context`), outside the timed call (its time is in the json: milliseconds); diffusers projects them in every call.",
        f"- Outputs checked on the first round's warm-up calls: fp32 max |ours − diffusers| ≤ {FP32_TOLERANCE:g} × max |diffusers| "
        "(float32 rounding of the same sums in another order); bf16 ≤ 2 × diffusers' own bf16 error (its bf16 output against its "
        "fp32 output), two independent roundings of one computation.",
        ("- Peak: torch.cuda.max_memory_allocated above the memory allocated after warm-up (the weights), in the timed runs."
         if args.device.startswith("cuda") else
         "- Peak: resident-set high-water mark above the warmed-up process (weights included there), one process per side with "
         "MALLOC_MMAP_THRESHOLD_=65536; process peak: the whole resident set's high-water mark (weights, libraries, peak)."),
        f"- Targets (the decoder U-Nets): ours / diffusers ≤ {TARGET['bf16']} in bf16 and ≤ {TARGET['fp32']} in fp32, peak no higher.",
    ]
    if args.note:
        lines.append(f"- Note: {args.note}")
    head = ("| network | dtype | ours path | batch | ours s/call | diffusers s/call | ratio per round | ratio | target "
            "| ours peak MiB | diffusers peak MiB | ours process GiB | diffusers process GiB | outputs max abs diff |")
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["net"], r["dtype"], r["path"], str(r["batch"]), _f(r["ours_s"], ".3f"), _f(r["diffusers_s"], ".3f"),
                 " ".join(f"{x:.2f}" for x in r["per_round"]) or "—", _f(r["ratio"], ".2f"), _target(r) or "—",
                 _f(r["ours_peak"] and r["ours_peak"] / MiB, ",.0f"), _f(r["diffusers_peak"] and r["diffusers_peak"] / MiB, ",.0f"),
                 _f(r["ours_total"] and r["ours_total"] / GiB, ".2f"), _f(r["diffusers_total"] and r["diffusers_total"] / GiB, ".2f"),
                 _check_cell(r["check"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Networks: " + "; ".join(f"`{k}` {v}" for k, v in WHAT.items() if k in {r['net'] for r in rows}) + "."]
    errors = [(r["net"], r["dtype"], e) for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Failures:"] + [f"- {net} {dtype}: {e}" for net, dtype, e in errors]
    return "\n".join(lines) + "\n"


def _info(args) -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=HERE).stdout.strip()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown") if Path("/proc/cpuinfo").is_file() else "unknown"
    mem = out(["free", "-g"]).splitlines()
    free = "memory " + " ".join(mem[1].split()[1:2]) + " GiB, " + " ".join(mem[1].split()[-1:]) + " GiB available" if len(mem) > 1 else ""
    dirty = out(["git", "status", "--porcelain", "--", "../dalle2_core"])
    versions = out([args.diffusers_python, "-c", "import diffusers, torch; print(diffusers.__version__, torch.__version__)"]).split()
    return dict(command=shlex.join(["python", "benchmarks/diffusers_compare.py", *sys.argv[1:]]),
                date=datetime.datetime.now().isoformat(timespec="minutes"),
                commit=out(["git", "rev-parse", "--short", "HEAD"]) + (" (+ uncommitted dalle2_core changes)" if dirty else ""),
                cpu=cpu, free=free, load_start="/".join(f"{x:.1f}" for x in os.getloadavg()),
                diffusers=versions[0] if versions else "?", torch=versions[1] if len(versions) > 1 else "?")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS), metavar="NET", help=f"default: all ({', '.join(NETS)})")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16", "autocast"])
    p.add_argument("--ours-paths", nargs="+", default=["eager"], choices=["eager", "channels_last", "compile", "compile_cl"],
                   help="ours: eager (the default), channels_last, compile (compile_for_inference), compile_cl (both)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rounds-super-res", type=int, default=2, help="rounds for the 256 px super-resolution U-Net (a minute a call)")
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--ours-python", default=sys.executable)
    p.add_argument("--diffusers-python", default="/work/scratch/hf/bin/python", help="python of a venv with diffusers (and torch)")
    p.add_argument("--work", type=Path, default=None, help="where the weights go (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=None, help="default: results/diffusers-<device>[-<paths>].md")
    p.add_argument("--note", default="")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny configs (seconds): checks that the comparison runs")
    args = p.parse_args(argv)
    if min(args.rounds, args.rounds_super_res, args.iters, args.warmup) < 1:
        p.error("--rounds, --rounds-super-res, --iters and --warmup must be >= 1")
    if args.warmup != 1:
        p.error("--warmup is 1: the first call's output is the one checked")
    keep = args.work is not None
    args.work = args.work or Path(tempfile.mkdtemp(prefix="diffusers-compare-"))
    info = _info(args)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    name = f"diffusers-{args.device.split(':')[0]}" + ("" if args.ours_paths == ["eager"] else "-" + "-".join(args.ours_paths))
    name += "-tiny" if args.tiny else ""
    out = args.out or HERE / "results" / f"{name}.md"
    results = []
    try:
        for net in args.nets:
            results.append(measure_net(net, args, log))
            if not keep:
                shutil.rmtree(args.work / net, ignore_errors=True)  # 2-5 GB of weights per network
            text = write(results, args, info, out)  # after each network: a stopped run keeps what it measured
    finally:
        if not keep:
            shutil.rmtree(args.work, ignore_errors=True)
    if args.out is None and not args.tiny:
        update_readme(name, text)
    print(text, end="")


def write(results: list[dict], args, info: dict, out: Path) -> str:
    info["load_end"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows = summarise(results, args)
    text = markdown(rows, args, info)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(dict(info=info, results=results, rows=rows), indent=1) + "\n")
    return text

if __name__ == "__main__":
    main()
