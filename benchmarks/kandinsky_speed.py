"""Kandinsky 2.2 through `KandinskyPipeline` on this machine: seconds per image and peak memory, with and without offload.

    python benchmarks/kandinsky_speed.py --device cuda --dtype fp16 --offload --out-dir DIR   # what gpu_check.sh runs
    python benchmarks/kandinsky_speed.py --tiny                                               # seconds, CPU: checks the script

Full size: the text tower, prior, U-Net and MoVQ built from the Hub's configs (tests/fixtures/kandinsky/configs) with
random N(0, 0.02) weights (norm gains 1) made directly on the device in `--dtype`: the weights do not change the work
done. `--tiny`: the tests' diffusers-written tiny Kandinsky, converted. One image per row: prompt -> prior (its
default 25 steps, guided) -> decoder (`--steps`, default 100 as diffusers, guided) -> MoVQ, at each `--sizes`; the
first image of each size is a warm-up and not counted. `--offload`: the same rows again through
`KandinskyPipeline.offload(device)` (every network on the CPU, each on the device only while its stage runs). Peak:
`torch.cuda.max_memory_allocated` over the image (on the CPU: the resident-set high-water mark of the process).
Writes kandinsky-<device>.md and .json into `--out-dir` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from procmem import reset_peak, status_bytes

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures" / "kandinsky"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GiB = 2**30


def _config(path: str) -> dict:
    return json.loads((FIXTURES / "configs" / path).read_text())


def _realize(module: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Every parameter of a module built on meta made on `device` in `dtype`: N(0, 0.02), norm gains 1 and biases 0."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    for owner in module.modules():
        for name, p in list(owner._parameters.items()):
            if p is None:
                continue
            value = torch.empty(p.shape, device=device, dtype=dtype)
            if isinstance(owner, norms):
                value.fill_(1.0 if name == "weight" else 0.0)
            else:
                value.normal_(0.0, 0.02)
            owner._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    return module.to(device=device, dtype=dtype).eval()  # the buffers, built for real


def full_size_pipeline(device: str, dtype: torch.dtype):
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter, HFClipConfig
    from dalle2_core.convert.materialize import build_on_meta
    from dalle2_core.families.kandinsky import config as kc
    from dalle2_core.families.kandinsky.convert import CLIP_ARCHITECTURE
    from dalle2_core.families.kandinsky.decoder import KandinskyDecoder
    from dalle2_core.families.kandinsky.pipeline import KandinskyPipeline
    from dalle2_core.prior import StandardizedPrior

    text = HFClipConfig(name=CLIP_ARCHITECTURE, quick_gelu=False, vision=False, normalize=False, zero_padding=False,
                        pad_token="<|endoftext|>")
    prior = kc.prior_config(_config("prior/prior/config.json"), _config("prior/scheduler/scheduler_config.json"))
    decoder = kc.decoder_config(_config("decoder/unet/config.json"), _config("decoder/movq/config.json"),
                                _config("decoder/scheduler/scheduler_config.json"))
    parts = dict(clip=build_on_meta(lambda: HFClipAdapter(text)), prior=build_on_meta(lambda: StandardizedPrior(config=prior)),
                 decoder=build_on_meta(lambda: KandinskyDecoder(config=decoder)))
    return KandinskyPipeline(**{name: _realize(module, device, dtype) for name, module in parts.items()})


def tiny_pipeline(device: str, dtype: torch.dtype, workdir: Path):
    from dalle2_core.families.kandinsky.convert import convert_kandinsky
    from dalle2_core.pipeline import load_pipeline

    convert_kandinsky(FIXTURES / "tiny" / "prior", FIXTURES / "tiny" / "decoder", workdir / "model")
    return load_pipeline(workdir / "model", device=device, dtype=dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak()


def _peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else status_bytes("VmHWM")


@torch.no_grad()
def image_row(pipeline, device: str, size: int, steps: int) -> dict:
    """One timed image (after a warm-up image of the same size): seconds, peak memory, decoder seconds a step."""
    from dalle2_core.errors import NonFiniteOutputError

    settings = pipeline.resolve(steps=steps, size=(size, size))
    decoder_steps = []

    def on_step(stage, i, total, x):
        if stage == "decoder" and i in (0, total - 1):
            _sync(device)
            decoder_steps.append(time.perf_counter())

    row = {"size": size, "steps": steps, "prior_steps": settings.prior_steps}
    for warm in (True, False):
        decoder_steps.clear()
        _sync(device)
        _reset_peak(device)
        start = time.perf_counter()
        try:
            image = pipeline.generate(["a sunset on everest"], settings, generator=torch.Generator(device).manual_seed(0), on_step=on_step)
            finite = bool(image.isfinite().all())
        except NonFiniteOutputError:  # random weights in half precision may overflow; the work done is the same
            finite = False
        _sync(device)
        if not warm:
            row.update(seconds=time.perf_counter() - start, peak_bytes=_peak(device), finite=finite)
            if len(decoder_steps) == 2 and steps > 1:
                row["decoder_seconds_per_step"] = (decoder_steps[1] - decoder_steps[0]) / (steps - 1)
    return row


def report(result: dict, argv: list[str]) -> str:
    lines = [
        f"# Kandinsky 2.2 through KandinskyPipeline ({result['device']}, {result['dtype']}{', tiny' if result['tiny'] else ''})",
        "",
        f"- Command: `python benchmarks/kandinsky_speed.py {' '.join(argv)}`".rstrip(),
        f"- Date: {result['date']}; torch {torch.__version__}; {result['device_name']}; {platform.platform()}",
        f"- Weights: {result['weights_bytes'] / GiB:.2f} GiB (text tower, prior, U-Net, MoVQ); largest network "
        f"{result['largest_bytes'] / GiB:.2f} GiB",
        "- One image: prior (guided) -> decoder (guided) -> MoVQ, after a warm-up image of the same size.",
        "",
        "| offload | size | prior steps | decoder steps | s / image | decoder s / step | peak GiB | finite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        step = r.get("decoder_seconds_per_step")
        lines.append(f"| {'yes' if r['offload'] else 'no'} | {r['size']} | {r['prior_steps']} | {r['steps']} | {r['seconds']:.2f} | "
                     f"{'' if step is None else f'{step:.4f}'} | {r['peak_bytes'] / GiB:.2f} | {r['finite']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny Kandinsky (CPU, seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--sizes", default=None, help="picture sides, comma-separated (default 512,768; 16,32 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="decoder steps (default 100, diffusers' call default; 2 with --tiny)")
    parser.add_argument("--offload", action="store_true", help="also every row with the networks offloaded")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in (args.sizes or ("16,32" if args.tiny else "512,768")).split(",")]
    steps = args.steps or (2 if args.tiny else 100)
    dtype = DTYPES[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = tiny_pipeline(args.device, dtype, Path(tmp)) if args.tiny else full_size_pipeline(args.device, dtype)
        modules = (pipeline.clip, pipeline.prior, pipeline.decoder)
        sizes_of = [sum(t.numel() * t.element_size() for t in m.state_dict().values()) for m in modules]
        rows = [{"offload": False, **image_row(pipeline, args.device, size, steps)} for size in sizes]
        if args.offload:
            pipeline.offload(args.device)
            rows += [{"offload": True, **image_row(pipeline, args.device, size, steps)} for size in sizes]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs"
    result = {"device": args.device, "device_name": name, "dtype": args.dtype, "tiny": args.tiny, "rows": rows,
              "weights_bytes": sum(sizes_of), "largest_bytes": max(sizes_of), "date": datetime.datetime.now().isoformat(timespec="minutes")}
    stem = f"kandinsky-{args.device.split(':')[0]}{'-tiny' if args.tiny else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = report(result, argv)
    (args.out_dir / f"{stem}.md").write_text(text)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
