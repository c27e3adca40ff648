"""Prompt adherence of a model on the shapes world, as `dream eval shapes` measures it, written to one results file.

    python benchmarks/shapes_eval.py                          # the bundled model, 200 prompts per split, seed 0
    python benchmarks/shapes_eval.py --model runs/mine --num 100 --seed 1

Writes benchmarks/results/shapes-eval.{md,json} (the README links them): per-attribute accuracy and the
all-five rate for seen and held-out prompts, small objects apart, with the settings and the time taken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ATTRIBUTES = ("size", "color", "shape", "position", "background")


def run_eval(model: str, num: int, seed: int) -> dict:
    cmd = [sys.executable, "-c", "from dream_cli import main; main()", "eval", "shapes", "--model", model, "--num", str(num),
           "--seed", str(seed), "--json", "-q"]
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dream eval failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def small_shapes(report: dict, split: str) -> tuple[int, int]:
    """(right, total) shapes among the small objects of a split."""
    rows = [r for r in report["per_image"] if r["split"] == split and " small " in f" {r['prompt']} "]
    right = sum(1 for r in rows if r["read"] and r["read"]["shape"] in r["prompt"].split())
    return right, len(rows)


def table(report: dict, command: str) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    s = report["settings"]
    spacing = s.get("spacing") or "each stage's own"
    lines = [f"# Shapes-world prompt adherence of `{report['model']}` ({datetime.now(timezone.utc).isoformat(timespec='minutes')})",
             "", f"- Command: `{command}`",
             f"- Settings: sampler {s['sampler']}, spacing {spacing}, steps {s['steps']}, "
             f"prior steps {s['prior_steps']}, guidance {s['cond_scale']}, "
             f"prior guidance {s['prior_cond_scale']}, prior candidates {s['prior_samples']}; seed {report['seed']}; "
             f"{report['seconds']:.0f} s on {report['device']} ({report['seconds_per_image']:.2f} s/image)", "",
             "| split | n | " + " | ".join(ATTRIBUTES) + " | all five | small shapes right |",
             "|---" * (len(ATTRIBUTES) + 4) + "|"]
    for split in ("seen", "held"):
        r = report[split]
        right, total = small_shapes(report, split)
        lines.append(f"| {split} | {r['n']} | " + " | ".join(pct(r["accuracy"][a]) for a in ATTRIBUTES)
                     + f" | {pct(r['adherence'])} | {right} / {total} |")
    lines += ["", "Accuracy per attribute and all-five adherence in % of images (`docs/shapes-world.md` says how they are read back)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_eval(args.model, args.num, args.seed)
    command = "python benchmarks/shapes_eval.py" + "".join(
        f" --{k} {v}" for k, v in (("model", args.model), ("num", args.num), ("seed", args.seed)) if v != parser.get_default(k))
    RESULTS.mkdir(exist_ok=True)
    kept = {k: v for k, v in report.items() if k not in ("per_image", "model_path")}  # no local paths in a results file
    (RESULTS / "shapes-eval.json").write_text(json.dumps(kept, indent=1) + "\n")
    (RESULTS / "shapes-eval.md").write_text(table(report, command))
    print(table(report, command))


if __name__ == "__main__":
    main()
