"""Turn a `dream train` run folder into the shipped model folder: float16 weights plus sampling defaults.

    python scripts/bundle_shapes.py RUN_DIR OUT_DIR --sampler ddim --steps 25,15 --prior-steps 25 ...
        [--fast-sampler dpmpp --fast-steps 8,8 --fast-prior-steps 8 --fast-spacing trailing]

The `--fast-*` options record the settings `dream --fast` starts from (as changes to the defaults).

float16 halves the package size (the CLIP's 49,408-token embedding table dominates it); loading
builds the modules in float32 (or the requested precision) and casts the stored weights into them.
The training state (`training/`, `samples/`) is left behind. OUT_DIR is replaced as a whole.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from dalle2_core.atomic import temp_dir_beside
from dalle2_core.checkpoint import SamplingSettings, load_model, save_model
from dalle2_core.choices import SAMPLER_NAMES, SPACINGS


def _numbers(kind):
    def parse(text: str):
        values = tuple(kind(v) for v in text.split(","))
        return values[0] if len(values) == 1 else values

    return parse


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a dream train run folder")
    parser.add_argument("out", type=Path, help="the model folder to write (replaced)")
    parser.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES)
    parser.add_argument("--spacing", default=None, choices=SPACINGS, help="which timesteps the steps visit (default: each stage's own)")
    parser.add_argument("--steps", type=_numbers(int), default=None, help="decoder steps, one or one per unet")
    parser.add_argument("--prior-steps", type=int, default=None)
    parser.add_argument("--cond-scale", type=_numbers(float), default=1.0, help="decoder guidance, one or one per unet")
    parser.add_argument("--prior-cond-scale", type=float, default=1.0)
    parser.add_argument("--prior-samples", type=int, default=2)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--fast-sampler", choices=SAMPLER_NAMES)
    parser.add_argument("--fast-steps", type=_numbers(int))
    parser.add_argument("--fast-prior-steps", type=int)
    parser.add_argument("--fast-spacing", choices=SPACINGS)
    args = parser.parse_args(argv)

    defaults = SamplingSettings(
        sampler=args.sampler,
        steps=args.steps,
        prior_steps=args.prior_steps,
        cond_scale=args.cond_scale,
        prior_cond_scale=args.prior_cond_scale,
        prior_samples=args.prior_samples,
        spacing=args.spacing,
    )
    fast = {k: getattr(args, f"fast_{k}") for k in ("sampler", "steps", "prior_steps", "spacing") if getattr(args, f"fast_{k}") is not None}
    model = load_model(args.run, dtype=getattr(torch, args.dtype))
    if model.clip is None or model.prior is None or model.decoder is None:
        raise SystemExit(f"{args.run} lacks a stage (clip, prior, decoder): train every stage first")
    # written beside the target and swapped in, so a failed bundle never leaves half a model behind
    tmp = temp_dir_beside(args.out)
    try:
        save_model(tmp, clip=model.clip, prior=model.prior, decoder=model.decoder, defaults=defaults, fast=fast or None)
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return args.out


if __name__ == "__main__":
    main()
