"""Quality at fewer steps: `dream eval shapes` with DPM-Solver++ (ODE and SDE) at 25 steps per stage against DDPM at 250.

Every setting scores the same prompts with the same seed (prior, base unet and upsampler all use the
named sampler and step count; guidance comes from the model's defaults). Prints a markdown table of
all-five adherence per split and the difference to the first setting, in points, and writes it to
`benchmarks/results/shapes-samplers.md`.

    python benchmarks/shapes_samplers.py                          # dpmpp(_sde):25 vs ddpm:250, 200 prompts per split
    python benchmarks/shapes_samplers.py --num 100 --settings ddpm:250 dpmpp:25 ddim:25
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dalle2_core.diffusion import SAMPLERS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from shapes_latency import dream_command  # noqa: E402


def evaluate(model: str, num: int, seed: int, sampler: str, steps: int) -> dict:
    cmd = [*dream_command(), "eval", "shapes", "--model", model, "--num", str(num), "--seed", str(seed),
           "--sampler", sampler, "--steps", f"{steps},{steps}", "--prior-steps", str(steps), "--json", "-q"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"dream eval failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    return dict(setting=f"{sampler}:{steps}", seconds=time.perf_counter() - start,
                seen=report["seen"], held=report["held"])


def table(rows: list[dict], args) -> str:
    ref = rows[0]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    delta = lambda r, split: f"{100 * (r[split]['adherence'] - ref[split]['adherence']):+.1f}"  # noqa: E731
    lines = [
        "# Shapes world: adherence by sampler and step count",
        "",
        f"- Command: `python benchmarks/shapes_samplers.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; model {args.model}; "
        f"{args.num} canonical prompts per split, seed {args.seed}; steps apply to the prior and to both unets",
        "",
        "| sampler:steps | seen all five % | held all five % | seen Δ pts | held Δ pts | seen shape % | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {pct(r['seen']['adherence'])} | {pct(r['held']['adherence'])} | "
                     f"{delta(r, 'seen')} | {delta(r, 'held')} | {pct(r['seen']['accuracy']['shape'])} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--num", type=int, default=200, help="prompts per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", default=["ddpm:250", "dpmpp:25", "dpmpp_sde:25"], metavar="SAMPLER:STEPS",
                   help="the first is the reference the others are compared with")
    p.add_argument("--out", type=Path, default=HERE / "results" / "shapes-samplers.md")
    args = p.parse_args(argv)
    rows = []
    for setting in args.settings:
        sampler, _, steps = setting.partition(":")
        if sampler not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            p.error(f"setting {setting!r} is not understood; accepted: SAMPLER:STEPS with {', '.join(SAMPLERS)}")
        rows.append(evaluate(args.model, args.num, args.seed, sampler, int(steps)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    text = table(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
