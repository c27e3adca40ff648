"""Peak memory of Kandinsky 2.2 at full size on CPU: convert, load what text-to-image loads, sample one picture.

    python benchmarks/kandinsky_memory.py                  # full size (≈ 16 GB written twice: run it alone)
    python benchmarks/kandinsky_memory.py --tiny           # the test fixture's tiny folders: checks the script in seconds

Full size: random N(0, 0.02) weights (norm gains too; only memory is measured) under diffusers' and transformers'
names and shapes (tests/fixtures/kandinsky/full_size.json, recorded by diffusers / transformers from the Hub's
configs in tests/fixtures/kandinsky/configs) are written as safetensors shards with their configs: a prior folder
(text tower float32, vision tower float16, as on the Hub) and a decoder folder. Then, each in a fresh process with
`MALLOC_MMAP_THRESHOLD_=65536` so freed tensors leave the resident set:
  convert   `convert_kandinsky(prior, decoder, out)`
  generate  `load_pipeline` of the converted folder, as `dream --model` loads it: clip (text tower), prior and
            decoder (U-Net + MoVQ), not the vision tower; every tensor read once; then one picture (default 512 px)
            with 2 steps a stage through `KandinskyPipeline.generate` (text tower -> guided prior -> guided decoder on
            its leading timesteps -> MoVQ decode)
Peaks are resident-set high-water marks (`VmHWM`, file-backed pages of the mapped weights included): the whole
process, and above the process after its imports. Writes benchmarks/results/kandinsky-memory.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from procmem import reset_peak, status_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "tests" / "fixtures" / "kandinsky"
RESULTS = HERE / "results" / "kandinsky-memory"
GiB = 2**30
SHARD_BYTES = GiB  # shards keep the writer's own peak near one shard
# Hub folder -> component folder -> (full_size.json entry, weights file stem, dtype on the Hub)
LAYOUT = {
    "prior": {"prior": ("prior", "diffusion_pytorch_model", torch.float32), "text_encoder": ("text_encoder", "model", torch.float32),
              "image_encoder": ("image_encoder", "model", torch.float16)},
    "decoder": {"unet": ("unet", "diffusion_pytorch_model", torch.float32), "movq": ("movq", "diffusion_pytorch_model", torch.float32)},
}


# --- worker side ---------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    return {key: status_bytes(key) for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def write_folders(workdir: Path) -> dict:
    """Full-size diffusers-layout prior and decoder folders of random weights; returns bytes written per component."""
    shapes = json.loads((FIXTURES / "full_size.json").read_text())
    g = torch.Generator().manual_seed(0)
    written = {}
    for repo, components in LAYOUT.items():
        root = workdir / repo
        shutil.copytree(FIXTURES / "configs" / repo, root)  # model_index.json and every component's config
        if repo == "prior":  # the tokenizer transformers wrote for the fixture (OpenAI's BPE, <|endoftext|> padding)
            shutil.copytree(FIXTURES / "tiny" / "prior" / "tokenizer", root / "tokenizer")
        for folder, (entry, stem, dtype) in components.items():
            shards, current, size = [], {}, 0
            for key, shape in shapes[entry].items():
                tensor = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g).to(dtype)
                current[key], size = tensor, size + tensor.numel() * tensor.element_size()
                if size >= SHARD_BYTES:
                    shards.append(_write_shard(current, root / folder, len(shards)))
                    current, size = {}, 0
            if current:
                shards.append(_write_shard(current, root / folder, len(shards)))
            weight_map = {}
            for index, (path, keys) in enumerate(shards, start=1):  # transformers' / diffusers' shard names and index
                final = path.with_name(f"{stem}-{index:05d}-of-{len(shards):05d}.safetensors")
                path.rename(final)
                weight_map.update(dict.fromkeys(keys, final.name))
            (root / folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
            written[entry] = sum(math.prod(s) for s in shapes[entry].values()) * torch.empty(0, dtype=dtype).element_size()
    return {"bytes": written}


def _write_shard(tensors: dict, folder: Path, number: int) -> tuple[Path, list[str]]:
    from safetensors.torch import save_file

    path = folder / f"shard-{number}.safetensors"
    save_file(tensors, str(path))
    return path, list(tensors)


def convert(workdir: Path, source: Path) -> dict:
    import dalle2_core.clip.hf_clip_adapter  # noqa: F401  (imported before the baseline)
    from dalle2_core.families.kandinsky.convert import convert_kandinsky

    base = reset_peak()
    start = time.perf_counter()
    convert_kandinsky(source / "prior", source / "decoder", workdir / "model")
    return {"seconds": time.perf_counter() - start, "baseline_rss": base, "peak_rss": _status()["VmHWM"]}


def _touch(modules) -> None:
    """Read every element once without temporaries (a memory-mapped tensor is resident only once read)."""
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if t.numel():
                t.max()


@torch.no_grad()
def generate(model: Path, size: int, steps: int) -> dict:
    import dalle2_core.clip.hf_clip_adapter  # noqa: F401  (imported before the baseline, as loading would)
    import dalle2_core.families.kandinsky.pipeline  # noqa: F401
    from dalle2_core.pipeline import load_pipeline

    base = reset_peak()
    start = time.perf_counter()
    pipeline = load_pipeline(model)  # what `dream --model` loads: clip (text tower), prior, decoder (U-Net + MoVQ)
    modules = (pipeline.clip, pipeline.prior, pipeline.decoder)
    weights = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    loaded = _status()
    _touch(modules)
    touched = _status()
    load_seconds = time.perf_counter() - start

    start = time.perf_counter()
    settings = pipeline.resolve(steps=steps, prior_steps=steps, size=(size, size))
    image = pipeline.generate(["a sunset on everest"], settings, generator=torch.Generator().manual_seed(0))
    final = _status()
    return {
        "baseline_rss": base, "weights_bytes": weights, "load_seconds": load_seconds, "image_seconds": time.perf_counter() - start,
        "peak_after_load": loaded["VmHWM"], "peak_after_touch": touched["VmHWM"], "peak_rss": final["VmHWM"],
        "file_backed_after": final["RssFile"], "image_shape": list(image.shape), "image_std": float(image.std()),
        "loaded_components": sorted(pipeline._modules),
    }


def worker(args) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    workdir = Path(args.workdir)
    if args.worker == "write":
        result = write_folders(workdir)
    elif args.worker == "convert":
        result = convert(workdir, Path(args.source))
    else:
        result = generate(workdir / "model", args.size, args.steps)
    print(json.dumps(result))


# --- orchestration -------------------------------------------------------------------------------------


def run_worker(*argv: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # this checkout's dalle2_core
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(result: dict, argv: list[str]) -> str:
    gib = lambda b: f"{b / GiB:.2f}"  # noqa: E731
    gen, conv, weights = result["generate"], result["convert"], result["generate"]["weights_bytes"]
    rows = [
        ("convert (vision tower in float32 for the zero-image embedding, one component at a time)", conv["peak_rss"],
         conv["peak_rss"] - conv["baseline_rss"], conv["seconds"]),
        ("load clip + prior + decoder (memory-mapped views)", gen["peak_after_load"], gen["peak_after_load"] - gen["baseline_rss"],
         gen["load_seconds"]),
        ("... and every tensor read once", gen["peak_after_touch"], gen["peak_after_touch"] - gen["baseline_rss"], None),
        (f"... and one {gen['image_shape'][-1]} px picture, {result['steps']} steps a stage", gen["peak_rss"],
         gen["peak_rss"] - gen["baseline_rss"], gen["image_seconds"]),
    ]
    lines = [
        "# Kandinsky 2.2: peak memory of convert, load and one picture (CPU, float32)",
        "",
        f"- Command: `python benchmarks/kandinsky_memory.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}; {platform.platform()}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
        f"- Weights text-to-image loads (text tower, prior, U-Net, MoVQ, float32): {gib(weights)} GiB; source written: "
        + ", ".join(f"{k} {gib(v)} GiB" for k, v in result["write"]["bytes"].items()),
        "- Peak: the process's resident-set high-water mark (VmHWM, mapped weight pages included); above baseline: minus the",
        "  resident set after the imports. Ratio: peak / weights text-to-image loads (target <= 1.2).",
        "",
        "| step | peak GiB | above baseline GiB | peak / weights | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, peak, above, seconds in rows:
        lines.append(f"| {name} | {gib(peak)} | {gib(above)} | {peak / weights:.2f} | {'' if seconds is None else f'{seconds:.0f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the test fixture's tiny folders instead of full-size random weights")
    parser.add_argument("--size", type=int, default=None, help="picture size in pixels (default 512; 16 with --tiny)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps of the prior and of the decoder")
    parser.add_argument("--workdir", type=Path, default=None, help="where the folders are written (default: a temp folder)")
    parser.add_argument("--worker", choices=["write", "convert", "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    argv = sys.argv[1:] if argv is None else argv
    size = args.size or (16 if args.tiny else 512)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        if args.tiny:
            source, written = FIXTURES / "tiny", {"bytes": {}}
        else:
            source, written = Path(tmp), run_worker("--worker", "write", "--workdir", tmp)
        result = {"write": written, "steps": args.steps}
        result["convert"] = run_worker("--worker", "convert", "--workdir", tmp, "--source", str(source))
        if not args.tiny:  # the converted folder holds everything the generation needs
            for repo in LAYOUT:
                shutil.rmtree(source / repo)
        result["generate"] = run_worker("--worker", "generate", "--workdir", tmp, "--size", str(size), "--steps", str(args.steps))
    text = report(result, argv)
    if not args.tiny:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.with_suffix(".md").write_text(text)
        RESULTS.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
