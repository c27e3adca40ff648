"""What a user feels first: `dream --help`, `--version` and a usage error, the imports behind a run, and
`dream --model shapes -n 4` end to end and by phase — each in fresh processes, medians over runs.

    python benchmarks/startup.py                 # writes benchmarks/results/startup.{md,json}
    python benchmarks/startup.py --runs 9

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
    "import open_clip": "import open_clip",
    "import dalle2_core.pipeline": "import dalle2_core.pipeline",
}

# one fresh process: the phases of `dream --model shapes -n 4` in the library, seconds each, as JSON
PHASES = """
import json, time
t = [time.perf_counter()]
import torch; t.append(time.perf_counter())
import open_clip; t.append(time.perf_counter())
from dalle2_core.hub import bundled_path
from dalle2_core.pipeline import load_pipeline; t.append(time.perf_counter())
pipeline = load_pipeline(bundled_path("shapes")); t.append(time.perf_counter())
pipeline.generate([PROMPT] * 4, pipeline.resolve(), generator=[torch.Generator().manual_seed(i) for i in range(4)])
t.append(time.perf_counter())
names = ("import torch", "import open_clip (torchvision with it)", "import dalle2_core.pipeline (the rest)",
         "load the bundled model", "sample 4 images (default settings)")
print(json.dumps({n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}))
"""


def _phases(runs: int, env: dict) -> dict:
    """Median seconds of each phase over `runs` fresh processes."""
    code = PHASES.replace("PROMPT", repr(PROMPT))
    results = [json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
                          .stdout.splitlines()[-1]) for _ in range(runs)]
    return {k: round(statistics.median(r[k] for r in results), 2) for k in results[0]}


def _median_seconds(cmd: list[str], runs: int, env: dict) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(runs: int, shapes_runs: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = {name: _median_seconds([*dream_command(), *args], runs, env) for name, args in QUICK.items()}
    imports = {name: _median_seconds([sys.executable, "-c", code], max(3, runs // 2), env) for name, code in IMPORTS.items()}
    time_once("shapes", 1, PROMPT, env, [])  # warms the file cache, not measured
    shapes = [time_once("shapes", 4, PROMPT, env, []) for _ in range(shapes_runs)]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "commit": _commit(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "load_average": [round(x, 2) for x in os.getloadavg()], "runs": runs,
        "quick_s": {k: round(v, 3) for k, v in rows.items()}, "imports_s": {k: round(v, 3) for k, v in imports.items()},
        "shapes_n4_runs_s": [round(s, 2) for s in shapes], "shapes_n4_median_s": round(statistics.median(shapes), 2),
        "shapes_n4_phases_s": _phases(shapes_runs, env),
    }


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return done.stdout.strip() or "unknown"


def table(r: dict, command: str) -> str:
    lines = [f"# Start-up and the first images ({r['date']}, commit {r['commit']})", "",
             f"- Command: `{command}`", f"- Machine: {r['machine']}; load average at the end {r['load_average']}",
             f"- Medians over {r['runs']} fresh processes each (imports: over {max(3, r['runs'] // 2)})", "",
             "| what | seconds | target |", "|---|---|---|"]
    lines += [f"| `{k}` | {v:.3f} | ≤ 0.3 |" for k, v in r["quick_s"].items()]
    lines += [f"| `dream --model shapes -n 4 '{PROMPT}'` (files on disk) | {r['shapes_n4_median_s']:.2f} "
              f"(runs {', '.join(map(str, r['shapes_n4_runs_s']))}) | ≤ 4 |", "", "Imports behind a run:", "",
              "| import | seconds |", "|---|---|"]
    lines += [f"| `{k}` | {v:.3f} |" for k, v in r["imports_s"].items()]
    lines += ["", f"Where `dream --model shapes -n 4` spends its time (medians over {len(r['shapes_n4_runs_s'])} fresh processes, "
              "the library's calls in one process; the CLI adds its own import and writing the PNGs):", "",
              "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["shapes_n4_phases_s"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--shapes-runs", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.runs, args.shapes_runs)
    command = "python benchmarks/startup.py" + (f" --runs {args.runs}" if args.runs != 7 else "") + (
        f" --shapes-runs {args.shapes_runs}" if args.shapes_runs != 3 else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "startup.md").write_text(table(result, command))
    print(table(result, command))


if __name__ == "__main__":
    main()
