"""Peak memory of loading Karlo's components: full-size random weights written as safetensors, then loaded
with `dalle2_core.convert.materialize` (parameters built on meta, tensors assigned from the memory-mapped
file) and, for comparison, the plain way (build with random init, `load_file`, `load_state_dict`).

    python benchmarks/karlo_memory.py                                  # every registered component, float32
    python benchmarks/karlo_memory.py --components text_encoder --dtypes float32 float16

Each step runs in a fresh process, with `MALLOC_MMAP_THRESHOLD_=65536` so freed tensors leave the
resident set. A load's figures are resident-set high-water marks (`VmHWM`, reset through
`/proc/self/clear_refs` after the imports and the module's construction code are loaded) above the
resident set at that point: `load` right after loading, `use` after also reading every tensor once (a
memory-mapped tensor is only resident once read). Both count file-backed pages of the mapped weights.
Writes benchmarks/results/karlo-memory.md and .json.

A component is a name -> `Component` entry: how to build the module, the names and shapes of the
tensors in its file, and the key map between them. `module_component` makes one for any module builder
whose file uses the module's own names; the Karlo networks are added that way (or with their diffusers
key maps) once they exist.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from procmem import reset_peak, status_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "karlo-memory"
CLIP_CONFIG = HERE.parent / "tests" / "fixtures" / "hf_clip" / "configs" / "openai-clip-vit-large-patch14.json"
MiB = 2**20


@dataclass(frozen=True)
class Component:
    build: Callable[[], torch.nn.Module]  # the module, as `materialize` builds it
    source_shapes: Callable[[], dict[str, tuple[int, ...]]]  # tensor names and shapes in the file (float32)
    key_map: Callable[[], list | None]  # `materialize` entries, None: the module's own names
    description: str


def module_component(build: Callable[[], torch.nn.Module], description: str) -> Component:
    """Any module builder, stored under the module's own state-dict names."""

    def shapes() -> dict[str, tuple[int, ...]]:
        from dalle2_core.convert.materialize import build_on_meta

        return {k: tuple(v.shape) for k, v in build_on_meta(build).state_dict().items()}

    return Component(build, shapes, lambda: None, description)


def _text_encoder() -> Component:
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter
    from dalle2_core.convert.hf_clip_keys import text_key_map, transformers_shapes

    config = json.loads(CLIP_CONFIG.read_text())
    return Component(
        build=lambda: HFClipAdapter(vision=False, normalize=False, zero_padding=False),
        source_shapes=lambda: transformers_shapes(config, "text"),
        key_map=lambda: text_key_map(12, "text."),
        description="OpenAI CLIP ViT-L/14 text tower (Karlo's text_encoder), transformers names -> open_clip",
    )


def _image_encoder() -> Component:
    from dalle2_core.clip.hf_clip_adapter import HFClipAdapter
    from dalle2_core.convert.hf_clip_keys import transformers_shapes, vision_key_map

    config = json.loads(CLIP_CONFIG.read_text())
    return Component(
        build=lambda: HFClipAdapter(text=False, normalize=False),
        source_shapes=lambda: transformers_shapes(config, "vision"),
        key_map=lambda: vision_key_map(24, "visual."),
        description="OpenAI CLIP ViT-L/14 vision tower (Karlo's image_encoder), transformers names -> open_clip",
    )


# name -> factory (imports happen in the worker that needs them)
COMPONENTS: dict[str, Callable[[], Component]] = {"text_encoder": _text_encoder, "image_encoder": _image_encoder}


# --- worker side ---------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    return {key: status_bytes(key) for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def _touch(module: torch.nn.Module) -> float:
    """Read every element once without temporaries (a float32 copy would inflate the half-precision peak)."""
    return float(sum(t.max().item() for t in [*module.parameters(), *module.buffers()] if t.numel()))


def write(component: Component, path: Path) -> dict:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in component.source_shapes().items()}
    save_file(tensors, str(path))
    params = sum(t.numel() for t in tensors.values())
    return {"tensors": len(tensors), "params": params, "file_bytes": path.stat().st_size, "description": component.description}


def load(component: Component, path: Path, dtype: torch.dtype, mode: str) -> dict:
    from safetensors.torch import load_file

    from dalle2_core.convert.materialize import Rule, SafetensorsWeights, build_on_meta, materialize

    build_on_meta(component.build)  # construction code paths warmed up before the baseline
    base = reset_peak()
    start = time.perf_counter()
    if mode == "materialize":
        with SafetensorsWeights([path]) as weights:
            module = materialize(component.build, weights, component.key_map(), dtype=dtype)
    else:  # the plain way: an initialised module, the file loaded, copied in, then cast
        module = component.build()
        state = load_file(str(path))
        key_map = component.key_map()
        if key_map is not None:
            state = {r.target: (r.fn or (lambda t: t))(*(state[s] for s in r.sources)) for r in key_map if isinstance(r, Rule)}
        module.load_state_dict(state)
        del state
        module = module.to(dtype)
    seconds = time.perf_counter() - start
    after_load = _status()
    _touch(module)
    after_use = _status()
    return {
        "seconds": seconds, "baseline_rss": base,
        "load_peak": after_load["VmHWM"] - base, "use_peak": after_use["VmHWM"] - base,
        "rss_after_use": after_use["VmRSS"] - base, "file_backed_after_use": after_use["RssFile"],
        "weights_bytes": sum(p.numel() * p.element_size() for p in module.state_dict().values()),
    }


def worker(args) -> None:
    torch.set_num_threads(1)
    component = COMPONENTS[args.component]()
    path = Path(args.path)
    if args.worker == "write":
        result = write(component, path)
    else:
        result = load(component, path, getattr(torch, args.dtype), args.worker)
    print(json.dumps(result))


# --- orchestration -------------------------------------------------------------------------------------


def run_worker(*argv: str) -> dict:
    # the workers import this checkout's dalle2_core, whatever is installed
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(names: list[str], dtypes: list[str], workdir: Path) -> list[dict]:
    rows = []
    for name in names:
        path = workdir / f"{name}.safetensors"
        written = run_worker("--worker", "write", "--component", name, "--path", str(path))
        for dtype in dtypes:
            for mode in ("materialize", "plain"):
                result = run_worker("--worker", mode, "--component", name, "--path", str(path), "--dtype", dtype)
                rows.append({"component": name, "dtype": dtype, "mode": mode, **written, **result})
        path.unlink()
    return rows


def table(rows: list[dict], argv: list[str]) -> str:
    mib = lambda b: f"{b / MiB:,.0f}"  # noqa: E731
    lines = [
        "# Karlo weights: peak memory of loading",
        "",
        f"- Command: `python benchmarks/karlo_memory.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}; "
        f"{platform.platform()}; load average {os.getloadavg()[0]:.1f}",
        "- Peaks are resident-set high-water marks above the process after its imports (file-backed pages of the",
        "  mapped weights included). `load`: right after loading; `use`: after reading every tensor once.",
        "  `materialize`: parameters built on meta, tensors assigned from the memory-mapped file (cast one by one).",
        "  `plain`: random init, `safetensors.torch.load_file`, `load_state_dict`, `.to(dtype)`.",
        "",
        "| component | params | file MiB | dtype | loader | weights MiB | load peak MiB | use peak MiB | x weights | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['component']} | {r['params'] / 1e6:.1f} M | {mib(r['file_bytes'])} | {r['dtype']} | {r['mode']} | "
            f"{mib(r['weights_bytes'])} | {mib(r['load_peak'])} | {mib(r['use_peak'])} | "
            f"{r['use_peak'] / r['weights_bytes']:.2f} | {r['seconds']:.1f} |"
        )
    descriptions = {r["component"]: r["description"] for r in rows}
    lines += ["", *(f"- `{n}`: {d}" for n, d in descriptions.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=list(COMPONENTS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--workdir", type=Path, default=None, help="where the weights are written (default: a temp folder)")
    parser.add_argument("--worker", choices=["write", "materialize", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--component", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = measure(args.components, args.dtypes, Path(tmp))
    text = table(rows, argv)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".md").write_text(text)
    RESULTS.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
