"""Quality at fewer network calls: `dream eval shapes` adherence by sampler, step count and timestep spacing.

Every setting scores the same prompts with the same seed (guidance and prior candidates come from the
model's defaults); the first setting is the reference the others are compared with. A setting is
SAMPLER:STEPS[:SPACING]: STEPS is one count for the prior and every unet (`25`) or the prior's count and
the unets' (`10/10,5`); SPACING is one of uniform (the default), leading, trailing, karras.

Each row records the network rows evaluated per image, counted by forward hooks on the prior network and
every unet during a one-image run of the same settings: a guided stage (scale != 1) evaluates two rows
per image per step, the prior one per candidate per step (the text encoder's one row per image is left out). Adherence (all five
attributes right, per split) comes with the 95 % Wilson half-width of its binomial proportion, and the
difference to the reference with the 95 % half-width of the paired per-prompt difference (the same
prompts and noise seeds in every row). Rows are written as they complete to
`benchmarks/results/shapes-samplers.{md,json}`; `--resume` keeps the rows of the JSON that match.

    python benchmarks/shapes_samplers.py                          # the reference and the defaults, 200 prompts per split
    python benchmarks/shapes_samplers.py --resume --settings ddpm:250 dpmpp:10:trailing dpmpp_sde:15/15,10:karras
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dalle2_core.atomic import atomic_path
from dalle2_core.choices import SAMPLER_NAMES, SPACINGS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from shapes_latency import dream_command  # noqa: E402

Z95 = 1.959964  # two-sided 95 % normal quantile
SPLITS = ("seen", "held")


@dataclass(frozen=True)
class Setting:
    sampler: str
    prior_steps: int
    steps: tuple[int, ...]  # per unet; one value applies to every unet
    spacing: str = "uniform"

    @classmethod
    def parse(cls, text: str) -> Setting:
        """SAMPLER:STEPS[:SPACING] with STEPS `N` or `P/U1[,U2...]`; a misfit raises ValueError naming the text."""
        problem = (f"setting {text!r} is not understood; accepted: SAMPLER:STEPS[:SPACING] with SAMPLER one of {', '.join(SAMPLER_NAMES)}, "
                   f"STEPS N or PRIOR/UNET1,UNET2 (integers >= 1), SPACING one of {', '.join(SPACINGS)}")
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[0] not in SAMPLER_NAMES or (len(parts) == 3 and parts[2] not in SPACINGS):
            raise ValueError(problem)
        prior, _, unets = parts[1].partition("/")
        counts = [prior, *(unets.split(",") if unets else [prior])]
        if not all(c.isdigit() and int(c) >= 1 for c in counts):
            raise ValueError(problem)
        return cls(parts[0], int(counts[0]), tuple(int(c) for c in counts[1:]), parts[2] if len(parts) == 3 else "uniform")

    def __str__(self) -> str:
        unets = ",".join(map(str, self.steps))
        steps = str(self.prior_steps) if set(self.steps) == {self.prior_steps} else f"{self.prior_steps}/{unets}"
        return f"{self.sampler}:{steps}:{self.spacing}"

    def options(self) -> list[str]:
        """The `dream` options that select this setting."""
        return ["--sampler", self.sampler, "--steps", ",".join(map(str, self.steps)), "--prior-steps", str(self.prior_steps),
                "--spacing", self.spacing]


def evaluate(setting: Setting, args) -> dict:
    """Adherence per split and per image (in prompt order) from one `dream eval shapes` run."""
    cmd = [*dream_command(), "eval", "shapes", "--model", args.model, "--num", str(args.num), "--seed", str(args.seed),
           "--batch-size", str(args.batch_size), *setting.options(), "--json", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"dream eval failed for {setting} ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    row = dict(seconds=report["seconds"], settings=report["settings"])
    for split in SPLITS:
        row[split] = dict(adherence=report[split]["adherence"], n=report[split]["n"],
                          adheres=[bool(r["adheres"]) for r in report["per_image"] if r["split"] == split])
    return row


def network_rows(setting: Setting, model: str) -> dict[str, int]:
    """Rows each network evaluates for one image under `setting`: forward hooks count the batch rows of every call."""
    import torch

    from dalle2_core.hub import resolve_model
    from dalle2_core.pipeline import load_pipeline

    pipeline = load_pipeline(resolve_model(model).path)
    networks = {"prior": pipeline.prior.net, **{f"unet {i + 1}": unet for i, unet in enumerate(pipeline.decoder.unets)}}
    counts = dict.fromkeys(networks, 0)

    def hook(name):
        def count(module, inputs, kwargs):
            first = inputs[0] if inputs else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            counts[name] += first.shape[0]
        return count

    handles = [net.register_forward_pre_hook(hook(name), with_kwargs=True) for name, net in networks.items()]
    try:
        s = pipeline.resolve(sampler=setting.sampler, steps=setting.steps, prior_steps=setting.prior_steps, spacing=setting.spacing)
        pipeline.generate(["a large red circle on the left on a blue background"], s, generator=torch.Generator().manual_seed(0))
    finally:
        for handle in handles:
            handle.remove()
    return counts


def wilson_half_width(p: float, n: int) -> float:
    """Half the width of the 95 % Wilson score interval of a proportion p observed over n trials."""
    return Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)


def paired_difference(row: list[bool], ref: list[bool]) -> tuple[float, float]:
    """Mean difference row - ref of paired 0/1 outcomes and the 95 % half-width of that mean (normal approximation)."""
    d = [int(a) - int(b) for a, b in zip(row, ref, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, Z95 * math.sqrt(var / n)


def table(rows: list[dict], args, command: str) -> str:
    ref = rows[0]
    pts = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "# Shapes world: adherence by sampler, steps and spacing",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; model {args.model}; {args.num} canonical prompts per split, "
        f"seed {args.seed}; guidance and prior candidates are the model's defaults ({_guidance(ref)}).",
        "- Setting: `sampler:steps:spacing`, steps for the prior and every unet (`P/U1,U2`: the prior's, then each unet's).",
        "- Network rows / image: rows the prior network and the unets evaluate per image, counted by forward hooks in a "
        "one-image run (a guided stage evaluates two rows per step, the prior one per candidate per step; the text encoder's "
        "one row is left out).",
        "- All five %: images with all five attributes read back right, ± the 95 % Wilson half-width. Δ: points against the "
        "first row, ± the 95 % half-width of the paired per-prompt difference (same prompts, same noise seeds).",
        "- Sampling s: wall seconds of the sampling loop for all images on a shared 2-core CPU (noisy; the rows are the measure).",
        "",
        "| setting | network rows / image (prior + unets) | seen all five % | held all five % | seen Δ pts | held Δ pts | sampling s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["rows"]
        parts = " + ".join(map(str, c.values()))
        cells = [f"{pts(r[s]['adherence'])} ± {pts(wilson_half_width(r[s]['adherence'], r[s]['n']))}" for s in SPLITS]
        deltas = []
        for s in SPLITS:
            mean, half = paired_difference(r[s]["adheres"], ref[s]["adheres"])
            deltas.append(f"{100 * mean:+.1f} ± {100 * half:.1f}" if r is not ref else "ref")
        lines.append(f"| {r['setting']} | {sum(c.values())} ({parts}) | {' | '.join(cells)} | {' | '.join(deltas)} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _guidance(row: dict) -> str:
    s = row["settings"]
    return f"decoder guidance {s['cond_scale']}, prior guidance {s['prior_cond_scale']}, {s['prior_samples']} prior candidates"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--num", type=int, default=200, help="prompts per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50, help="images per forward pass (the figures do not depend on it)")
    p.add_argument("--settings", nargs="+", default=["ddpm:250", "dpmpp_sde:25"], metavar="SAMPLER:STEPS[:SPACING]",
                   help="the first is the reference the others are compared with")
    p.add_argument("--resume", action="store_true", help="keep the rows of --out's JSON that match model, prompts and seed")
    p.add_argument("--out", type=Path, default=HERE / "results" / "shapes-samplers.md")
    args = p.parse_args(argv)
    try:
        settings = [Setting.parse(text) for text in args.settings]
    except ValueError as err:
        p.error(str(err))
    command = "python benchmarks/shapes_samplers.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume")
    store = args.out.with_suffix(".json")
    key = dict(model=args.model, num=args.num, seed=args.seed)
    kept = {}
    if args.resume and store.is_file():
        old = json.loads(store.read_text())
        kept = {r["setting"]: r for r in old["rows"]} if old.get("key") == key else {}
    rows = []
    for setting in settings:
        name = str(setting)
        if name in kept:
            rows.append(kept[name])
        else:
            start = time.perf_counter()
            row = dict(setting=name, **evaluate(setting, args), rows=network_rows(setting, args.model))
            row["wall"] = time.perf_counter() - start
            rows.append(row)
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in SPLITS} | {s: rows[-1][s]["adherence"] for s in SPLITS}),
              file=sys.stderr, flush=True)
        _write(args.out, table(rows, args, command))
        _write(store, json.dumps(dict(key=key, command=command, rows=rows)) + "\n")
    print(table(rows, args, command))


def _write(path: Path, text: str) -> None:
    """Replace `path` whole, so a stopped run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
