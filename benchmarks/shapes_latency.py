"""Time from `dream --model shapes -n 4 PROMPT` to four PNGs on disk, model load and imports included.

Each run is a fresh `dream` process (what a newcomer types), so Python start-up, imports and loading
the bundled weights all count. Prints every run and the median as one JSON line per setting.

    python benchmarks/shapes_latency.py                     # 5 runs, torch's default thread count
    python benchmarks/shapes_latency.py --threads 1 2       # one setting per OMP_NUM_THREADS value
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a large red circle on the left on a blue background"


def dream_command() -> list[str]:
    """The installed `dream` entry point beside this interpreter, else `python -m`-style import."""
    exe = Path(sys.executable).with_name("dream")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "from dream_cli import main; main()"]


def time_once(model: str, num: int, prompt: str, env: dict, extra: list[str]) -> float:
    outdir = Path(tempfile.mkdtemp(prefix="shapes-latency-"))
    try:
        cmd = [*dream_command(), "--model", model, "-n", str(num), "--seed", "0", "--outdir", str(outdir), "-q", *extra, prompt]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"dream failed ({done.returncode}): {done.stderr.strip()}")
        written = sorted(outdir.glob("*.png"))
        if len(written) != num:
            raise SystemExit(f"expected {num} PNGs in {outdir}, found {len(written)}")
        return seconds
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("-n", "--num", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threads", type=int, nargs="*", default=[None], help="OMP_NUM_THREADS values to try (default: unset)")
    parser.add_argument("extra", nargs="*", help="more dream options after --, e.g. -- --steps 10")
    args = parser.parse_args(argv)

    for threads in args.threads:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if threads is None:
            env.pop("OMP_NUM_THREADS", None)
        else:
            env["OMP_NUM_THREADS"] = str(threads)
        time_once(args.model, 1, args.prompt, env, args.extra)  # warm the file cache, not measured
        runs = [time_once(args.model, args.num, args.prompt, env, args.extra) for _ in range(args.runs)]
        print(json.dumps({
            "command": f"dream --model {args.model} -n {args.num} {' '.join(args.extra)} '{args.prompt}'".replace("  ", " "),
            "omp_num_threads": threads, "runs_s": [round(r, 2) for r in runs], "median_s": round(statistics.median(runs), 2),
            "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()], "machine": platform.machine(),
        }))


if __name__ == "__main__":
    main()
