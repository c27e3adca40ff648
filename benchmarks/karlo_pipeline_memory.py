"""Peak memory of Karlo v1-alpha end to end on CPU: full-size random weights in diffusers' layout (from the real
configs), converted into a dream model folder, loaded and sampled into one 256 px image — in one process, as
a first `dream --model karlo` run does (download aside).

    python benchmarks/karlo_pipeline_memory.py --work /big/disk       # ~30 GB written there, ~10-20 min
    python benchmarks/karlo_pipeline_memory.py --work DIR --steps 2,2 --prior-steps 2

Figures are resident-set high-water marks (`VmHWM`) after each phase, in MiB, against the weights' size
(float32); file-backed pages of memory-mapped weights count. `MALLOC_MMAP_THRESHOLD_=65536` lets freed
tensors leave the resident set. Target: the whole run ≤ 1.3 × the weights. Writes
benchmarks/results/karlo-pipeline-memory.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from procmem import status_bytes

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
RESULTS = HERE / "results"
MiB = 2**20


def _hwm_mib() -> float:
    return status_bytes("VmHWM") / MiB


def write_source(folder: Path, seed: int = 0) -> int:
    """A diffusers UnCLIPPipeline folder of Karlo's full size with random N(0, 0.02) weights; returns its bytes."""
    import torch
    from safetensors.torch import save_file

    from dalle2_core.convert.hf_clip_keys import transformers_shapes

    configs, shapes = TESTS / "fixtures" / "karlo" / "configs", json.loads((TESTS / "fixtures" / "karlo" / "full_size.json").read_text())
    shutil.copytree(configs, folder, ignore=shutil.ignore_patterns("README.md"))
    clip = json.loads((TESTS / "fixtures" / "hf_clip" / "configs" / "openai-clip-vit-large-patch14.json").read_text())
    text = {**clip["text_config"], "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
            "projection_dim": clip.get("projection_dim", 768)}
    shapes["text_encoder"] = transformers_shapes(clip, "text")
    generator, total = torch.Generator().manual_seed(seed), 0
    for component, table in shapes.items():
        tensors = {}
        for key, shape in table.items():
            ones = key == "clip_std" or ("norm" in key and key.endswith("weight"))  # norm gains and the std near 1
            tensors[key] = (1 + 0.02 * torch.randn(shape, generator=generator)) if ones else 0.02 * torch.randn(shape, generator=generator)
        name = "model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors"
        (folder / component).mkdir(exist_ok=True)
        save_file(tensors, str(folder / component / name))
        total += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    (folder / "text_encoder" / "config.json").write_text(json.dumps(text))
    # Karlo's tokenizer as transformers wrote it (vocab.json + merges.txt, "!" padding)
    shutil.copytree(TESTS / "fixtures" / "tokenizers" / "karlo", folder / "tokenizer", dirs_exist_ok=True)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(text_encoder=["transformers", "CLIPTextModelWithProjection"], tokenizer=["transformers", "CLIPTokenizer"])
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return total


def run_phases(source: Path, out: Path, steps: tuple[int, int], prior_steps: int) -> dict:
    """convert -> load -> one image, in this process; VmHWM and seconds after each."""
    import torch

    from dalle2_core.families.karlo.convert import convert_unclip
    from dalle2_core.pipeline import load_pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    phases, start = {}, time.perf_counter()
    phases["imports"] = (_hwm_mib(), 0.0)
    convert_unclip(source, out)
    phases["convert"] = (_hwm_mib(), time.perf_counter() - start)
    pipeline = load_pipeline(out)
    phases["load"] = (_hwm_mib(), time.perf_counter() - start)
    with torch.inference_mode():
        image = pipeline.generate(["a sunset on everest"], pipeline.resolve(steps=steps, prior_steps=prior_steps),
                                  generator=[torch.Generator().manual_seed(0)])
    phases["one 256 px image"] = (_hwm_mib(), time.perf_counter() - start)
    return {"phases": {k: {"hwm_mib": round(h), "seconds": round(s, 1)} for k, (h, s) in phases.items()},
            "image": list(image.shape)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder on a disk with ~30 GB free")
    parser.add_argument("--steps", default="2,2", help="decoder,super-res steps (peak memory does not grow with steps)")
    parser.add_argument("--prior-steps", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = tuple(int(s) for s in args.steps.split(","))
    source, out = args.work / "karlo-source", args.work / "karlo-model"
    if args.child:
        print(json.dumps(run_phases(source, out, steps, args.prior_steps)))
        return
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    weights = write_source(source)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--work", str(args.work), "--steps", args.steps, "--prior-steps", str(args.prior_steps), "--child"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the measured run failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(weights_mib=round(weights / MiB), date=datetime.now(timezone.utc).isoformat(timespec="minutes"),
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", load=os.getloadavg()[0],
                  command=f"python benchmarks/karlo_pipeline_memory.py --work DIR --steps {args.steps} --prior-steps {args.prior_steps}")
    peak = max(p["hwm_mib"] for p in result["phases"].values())
    result["peak_over_weights"] = round(peak / result["weights_mib"], 2)
    lines = [f"# Karlo v1-alpha on CPU, fp32: peak memory of convert + load + one 256 px image ({result['date']})", "",
             f"- Command: `{result['command']}`", f"- Machine: {result['machine']}; load average {result['load']:.1f}",
             f"- Weights (float32, random, real shapes): {result['weights_mib']:,} MiB; output {result['image']}",
             "", "| after | resident-set high-water mark MiB | × weights | seconds since start |", "|---|---|---|---|"]
    weights = result["weights_mib"]
    lines += [f"| {k} | {p['hwm_mib']:,} | {p['hwm_mib'] / weights:.2f} | {p['seconds']} |" for k, p in result["phases"].items()]
    lines += ["", f"Peak over the whole run: {result['peak_over_weights']} × the weights (target ≤ 1.3)."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "karlo-pipeline-memory.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "karlo-pipeline-memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
