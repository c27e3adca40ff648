"""What a user feels first: `dream --help`, `--version` and a usage error, the imports behind a run, and
`dream --model shapes -n 4` end to end and by phase — each in fresh processes, medians over runs.

    python benchmarks/startup.py                 # writes benchmarks/results/startup.{md,json}
    python benchmarks/startup.py --runs 9

Others share this machine: it first waits (up to --wait s) for the 1-minute load average to fall below --max-load,
and records the load at the start and the end.

Targets: help, version and usage errors <= 0.3 s; `dream --model shapes -n 4` <= 4 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from shapes_latency import PROMPT, dream_command, time_once

RESULTS = Path(__file__).parent / "results"
QUICK = {
    "dream --help": ["--help"],
    "dream --version": ["--version"],
    "dream --cond-scale nan x (usage error)": ["--cond-scale", "nan", "x"],
    "dream train --help": ["train", "--help"],
}
IMPORTS = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import dalle2_core.pipeline": "import dalle2_core.pipeline",
    "import open_clip (not on the shapes path)": "import open_clip",
}
# imported by a run only when its model needs them; the shapes model needs none of them
NOT_NEEDED = ("open_clip", "torchvision", "timm", "torch._dynamo", "huggingface_hub")

# one fresh process doing what `dream --model shapes -n 4` does, in the library and the CLI's PNG writer: a wall-clock
# stamp after each phase (time.time(), comparable with the parent's stamp before the process was started), the
# modules of NOT_NEEDED it imported, and the sampling settings, as JSON
PHASES = """
import time
stamps = [time.time()]
import json, sys, tempfile
from pathlib import Path
import atexit, gc
import dream_cli  # first, as in `dream`: it sets OMP_WAIT_POLICY before torch loads OpenMP
atexit.register(gc.freeze)  # as dream's main does: no last cycle collection over everything alive at exit
import torch
stamps.append(time.time())
from dalle2_core.hub import bundled_path
from dalle2_core.pipeline import load_pipeline
from dream_cli.cli import cli
from dream_cli.output import png_text, save_png, slugify
stamps.append(time.time())
pipeline = load_pipeline(bundled_path("shapes"))
settings = pipeline.resolve()
stamps.append(time.time())
images = pipeline.generate([PROMPT] * 4, settings, generator=[torch.Generator().manual_seed(i) for i in range(4)]).float().cpu()
stamps.append(time.time())
info = {**settings.to_dict(), "model": "shapes", "dalle2_core_version": "benchmark", "size": [64, 64]}
with tempfile.TemporaryDirectory() as outdir:
    for i, image in enumerate(images):
        save_png(image, Path(outdir), f"{slugify(PROMPT)}-0-{i}", png_text(PROMPT, {**info, "seed": i}))
stamps.append(time.time())
calls = settings.prior_steps + sum(settings.steps)
print(json.dumps({"stamps": stamps, "calls": calls, "threads": torch.get_num_threads(), "settings": str(settings),
                  "imported": sorted(m for m in NOT_NEEDED if m in sys.modules)}))
"""
PHASE_NAMES = ("interpreter start-up", "import torch", "import dalle2_core + dream_cli (the shapes path)",
               "load the bundled model", "sample 4 images (default settings)", "write 4 PNGs", "exit")


def _phases_once(env: dict) -> dict:
    code = PHASES.replace("NOT_NEEDED", repr(NOT_NEEDED)).replace("PROMPT", repr(PROMPT))
    launched = time.time()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    ended = time.time()
    result = json.loads(done.stdout.splitlines()[-1])
    stamps = [launched, *result.pop("stamps"), ended]
    return {**result, "phases": dict(zip(PHASE_NAMES, (b - a for a, b in zip(stamps, stamps[1:])), strict=True))}


def _phase_medians(results: list[dict]) -> dict:
    """Median seconds of each phase over fresh processes, with what the last one reported."""
    medians = {k: round(statistics.median(r["phases"][k] for r in results), 2) for k in PHASE_NAMES}
    return {**{k: v for k, v in results[-1].items() if k != "phases"}, "phases_s": medians,
            "total_s": round(statistics.median(sum(r["phases"].values()) for r in results), 2)}


def _median_seconds(cmd: list[str], runs: int, env: dict) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _wait_for_quiet(max_load: float, wait_s: float) -> float:
    """The 1-minute load average once it is below `max_load`, or after `wait_s` seconds (others share this machine)."""
    deadline = time.monotonic() + wait_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return round(os.getloadavg()[0], 2)


def measure(runs: int, shapes_runs: int, max_load: float, wait_s: float) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    load_at_start = _wait_for_quiet(max_load, wait_s)
    rows = {name: _median_seconds([*dream_command(), *args], runs, env) for name, args in QUICK.items()}
    imports = {name: _median_seconds([sys.executable, "-c", code], max(3, runs // 2), env) for name, code in IMPORTS.items()}
    time_once("shapes", 1, PROMPT, env, [])  # warms the file cache, not measured
    shapes, phases = [], []
    for _ in range(shapes_runs):  # alternating, so both see the same conditions
        shapes.append(time_once("shapes", 4, PROMPT, env, []))
        phases.append(_phases_once(env))
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "commit": _commit(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "load_average_at_start": load_at_start, "load_average": [round(x, 2) for x in os.getloadavg()], "runs": runs,
        "quick_s": {k: round(v, 3) for k, v in rows.items()}, "imports_s": {k: round(v, 3) for k, v in imports.items()},
        "shapes_n4_runs_s": [round(s, 2) for s in shapes], "shapes_n4_median_s": round(statistics.median(shapes), 2),
        "shapes_n4_phases": _phase_medians(phases),
    }


def _commit() -> str:
    here = Path(__file__).parent
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here)
    return (done.stdout.strip() or "unknown") + (" with uncommitted changes" if changed.stdout.strip() else "")


def table(r: dict, command: str) -> str:
    p = r["shapes_n4_phases"]
    lines = [f"# Start-up and the first images ({r['date']}, commit {r['commit']})", "",
             f"- Command: `{command}`",
             f"- Machine: {r['machine']}; 1-minute load average {r['load_average_at_start']} at the start, "
             f"{r['load_average']} (1, 5, 15 min) at the end",
             f"- Medians over {r['runs']} fresh processes each (imports: over {max(3, r['runs'] // 2)})", "",
             "| what | seconds | target |", "|---|---|---|"]
    lines += [f"| `{k}` | {v:.3f} | ≤ 0.3 |" for k, v in r["quick_s"].items()]
    lines += [f"| `dream --model shapes -n 4 '{PROMPT}'` (files on disk) | {r['shapes_n4_median_s']:.2f} "
              f"(runs {', '.join(map(str, r['shapes_n4_runs_s']))}) | ≤ 4 |", "", "Imports, each alone in a fresh process:", "",
              "| import | seconds |", "|---|---|"]
    lines += [f"| `{k}` | {v:.3f} |" for k, v in r["imports_s"].items()]
    lines += ["", f"Where `dream --model shapes -n 4` spends its time: medians over {len(r['shapes_n4_runs_s'])} fresh processes "
              "(alternating with the runs above) doing the CLI's work in the library and the CLI's PNG writer, one wall-clock "
              f"stamp per phase. {p['calls']} network calls ({p['settings']}), {p['threads']} torch threads; "
              f"imported though not needed: {', '.join(p['imported']) or 'none'} (of {', '.join(NOT_NEEDED)}).", "",
              "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in p["phases_s"].items()]
    lines += [f"| total | {p['total_s']:.2f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--shapes-runs", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load average to fall below this")
    parser.add_argument("--wait", type=float, default=600, help="longest wait for it, seconds (then measure anyway)")
    args = parser.parse_args(argv)
    result = measure(args.runs, args.shapes_runs, args.max_load, args.wait)
    command = "python benchmarks/startup.py" + "".join(f" {flag} {value:g}" for flag, value, usual in (
        ("--runs", args.runs, 7), ("--shapes-runs", args.shapes_runs, 5), ("--max-load", args.max_load, 1.5)) if value != usual)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "startup.md").write_text(table(result, command))
    print(table(result, command))


if __name__ == "__main__":
    main()
