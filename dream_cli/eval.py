"""`dream eval shapes`: prompt adherence of a model on the shapes world (parses options, calls dalle2_core).

Canonical prompts of the seen and the held-out split are generated from text (prior, then decoder)
and read back with the shapes-world evaluator (`dalle2_core.shapes`). Printed: per-attribute
accuracy and the all-five adherence rate per split; `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from dream_cli.errors import DreamError
from dream_cli.output import SETTINGS_CHUNK, save_png, slugify
from dream_cli.sampling import Progress, opening, per_image_generators, sampling_errors, sampling_options


@click.group("eval")
def eval_group() -> None:
    """Measure how well a model follows its prompts."""


def _table(report: dict) -> str:
    from dalle2_core.shapes import ATTRIBUTES
    from dalle2_core.shapes.world import SPLITS

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    header = ["split", "n", *ATTRIBUTES, "all five"]
    rows = [
        [split, str(report[split]["n"]), *(pct(report[split]["accuracy"][a]) for a in ATTRIBUTES), pct(report[split]["adherence"])]
        for split in SPLITS
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), *map(fmt, rows)])


@eval_group.command("shapes")
@click.option("--num", type=click.IntRange(min=1), default=100, show_default=True,
              help="Prompts per split (seen and held-out); distinct up to the split's size (1470 / 210).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per forward pass (the figures do not depend on it).")
@click.option("--save-images", type=click.Path(path_type=Path), default=None,
              help="Also write every generated image here (PNG, prompt and read-back in the metadata).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object (per-image rows included).")
@sampling_options(model_default="shapes", seed_default=0)
def shapes(num: int, seed: int, batch_size: int, save_images: Path | None, as_json: bool, **opts) -> None:
    """Generate canonical shapes-world prompts and score the images against them."""
    from dalle2_core.shapes import eval_prompts, score
    from dalle2_core.shapes.world import SPLITS

    opts = {**opts, "seed": seed}
    with opening(opts, outdir=save_images, outdir_option="--save-images", images=0) as run:
        pipeline, resolved, s, device, quiet, outdir = run.pipeline, run.resolved, run.settings, run.device, run.quiet, run.outdir
        if not pipeline.has_prior or pipeline.unconditional:
            raise DreamError(f"model {resolved.spec!r} cannot generate from text (it needs a prior and a conditioned decoder)")
        prompts, compositions = [], []
        for split in SPLITS:
            p, c = eval_prompts(split, num, seed=seed)
            prompts += p
            compositions += c
        batches = -(-len(prompts) // batch_size)
        images = []
        start_time = time.perf_counter()
        with Progress(quiet, pipeline.stages(s), {n: batches for n, _ in pipeline.stages(s)}) as progress, sampling_errors():
            for start in range(0, len(prompts), batch_size):
                texts = prompts[start : start + batch_size]
                generator = per_image_generators(seed + start, len(texts), device)  # figures independent of --batch-size
                images.append(pipeline.generate(texts, s, generator=generator, on_step=progress).float().cpu())
        seconds = time.perf_counter() - start_time
    import torch

    images = torch.cat(images)  # (2 * num, c, h, w)
    report = score(images, compositions).to_dict()
    for row, prompt in zip(report["per_image"], prompts):
        row["prompt"] = prompt
    if outdir is not None:
        for i, (image, row) in enumerate(zip(images, report["per_image"])):
            info = {"prompt": row["prompt"], "split": row["split"], "read": row["read"], "adheres": row["adheres"]}
            stem = f"{row['split']}-{i:04d}-{slugify(row['prompt'])}"
            row["path"] = str(save_png(image, outdir, stem, {SETTINGS_CHUNK: json.dumps(info)}))

    settings = {k: getattr(s, k) for k in ("cond_scale", "prior_cond_scale", "prior_samples", "steps", "prior_steps", "sampler", "spacing")}
    header = {"model": resolved.spec, "model_path": str(resolved.path.resolve()), "seed": seed, "num": num,
              "settings": settings, "precision": opts["precision"], "device": str(device),
              "seconds": round(seconds, 2), "seconds_per_image": round(seconds / len(prompts), 4)}
    if as_json:
        click.echo(json.dumps({**header, **report}))
        return
    join = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
    click.echo(
        f"model {resolved.spec}  sampler {s.sampler}  steps {join(s.steps)}  prior steps {s.prior_steps}  "
        f"spacing {s.spacing or 'per stage'}  "
        f"cond scale {join(s.cond_scale)}  prior cond scale {s.prior_cond_scale:g}  prior samples {s.prior_samples}  "
        f"seed {seed}  ({seconds:.0f} s, {seconds / len(prompts):.2f} s/image)"
    )
    click.echo("accuracy per attribute and all-five adherence, % of images")
    click.echo(_table(report))
