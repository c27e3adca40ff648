"""Which change bought what: each opt-in path or default against the run without it, from the results files.

    python benchmarks/compare.py          # reads results/cpu-*.json, writes results/cpu-changes.md (+ README section)

Every row compares two tables that `run.sh` wrote (same cases, same machine, each with the peer side by
side): ours s/step and ours/peer ratios before -> after. Files that are missing are listed, not guessed.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from readme_section import update_readme  # noqa: E402

SAMPLE = ["decoder_sample_spec_64", "decoder_sample_laion_64", "prior_sample"]
# (change, where, file without it, file with it, cases)
CHANGES = [
    ("compile_for_inference (torch.compile, inductor freezing: weights pre-packed for oneDNN, fused GroupNorm/FiLM/SiLU)",
     "`nn/inference.py`, `--ours-fast`", "cpu-latest", "cpu-ours-fast-latest", SAMPLE),
    ("torch.compile of the training step (the trainers' `compile=`)", "`--ours-fast` on training",
     "cpu-latest", "cpu-ours-fast-latest", ["decoder_train_seed_64"]),
    ("guidance's batched branches in chunks of 4 rows (`Unet.sampling_max_batch = 4`), on the compiled path",
     "`diffusion/guidance.py`, `decoder/unet.py`; `--ours-fast --ours-sampling-max-batch 4`",
     "cpu-ours-fast-latest", "cpu-ours-fast-ours-max-batch4-latest", SAMPLE[:2]),
    ("selective recomputation off (the default below its 2 GiB budget) instead of always on",
     "`decoder/unet*.py` (`selective_recompute`)", "cpu-ours-selective_recompute-true-latest", "cpu-latest",
     ["decoder_train_seed_64", "decoder_train_spec_64"]),
]


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _figures(run: dict, case: str) -> dict | None:
    res = run["results"].get(case)
    if not res:
        return None
    ok = lambda rs: [r for r in rs if "error" not in r]  # noqa: E731
    ours, peer = ok(res["ours"]), ok(res["peer"])
    if not ours or not peer:
        return None
    ratios = [o["seconds_per_step"] / p["seconds_per_step"] for o, p in zip(res["ours"], res["peer"]) if "error" not in o | p]
    mem = res.get("memory", {})
    om, pm = mem.get("ours", {}).get("peak_bytes"), mem.get("peer", {}).get("peak_bytes")
    return dict(ours_s=statistics.median(r["seconds_per_step"] for r in ours), time_ratio=statistics.median(ratios) if ratios else None,
                mem=om, mem_ratio=om / pm if om and pm else None)


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def table() -> str:
    lines = ["# Which change bought what (CPU)", "",
             f"- Command: `python benchmarks/compare.py`; {datetime.datetime.now().isoformat(timespec='minutes')}",
             "- Each row: the same case in two results files written by `run.sh` (ours and the peer side by side in each);"
             " s/step is ours' median over rounds, ratios are ours / peer (time: median of per-round ratios).", "",
             "| change | where | case | ours s/step before → after | time ratio before → after | ours peak MiB before → after "
             "| memory ratio before → after | files |", "|---|---|---|---|---|---|---|---|"]
    missing = []
    for change, where, before_name, after_name, cases in CHANGES:
        before, after = _load(before_name), _load(after_name)
        if before is None or after is None:
            missing += [n for n, r in ((before_name, before), (after_name, after)) if r is None]
            continue
        for case in cases:
            b, a = _figures(before, case), _figures(after, case)
            if b is None or a is None:
                continue
            mib = lambda x: None if x is None else x / 2**20  # noqa: E731
            lines.append(
                f"| {change} | {where} | {case} | {_fmt(b['ours_s'], '.3f')} → {_fmt(a['ours_s'], '.3f')} | "
                f"{_fmt(b['time_ratio'], '.2f')} → {_fmt(a['time_ratio'], '.2f')} | {_fmt(mib(b['mem']), '.0f')} → "
                f"{_fmt(mib(a['mem']), '.0f')} | {_fmt(b['mem_ratio'], '.2f')} → {_fmt(a['mem_ratio'], '.2f')} | "
                f"{before_name} → {after_name} |")
    if missing:
        lines += ["", "Not compared (results file missing): " + ", ".join(sorted(set(missing)))]
    return "\n".join(lines) + "\n"


def main() -> None:
    text = table()
    (RESULTS / "cpu-changes.md").write_text(text)
    update_readme("cpu-changes", text)
    print(text, end="")


if __name__ == "__main__":
    main()
