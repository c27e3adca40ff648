"""benchmarks/gpu_check.sh --dry-run works on CPU and writes its results folder (what a GPU run would fill)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIFFUSERS_PYTHON = Path(os.environ.get("DIFFUSERS_PYTHON", "/work/scratch/hf/bin/python"))


def test_gpu_check_dry_run_writes_its_results_folder(tmp_path):
    env = {**os.environ, "OURS_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "DIFFUSERS_PYTHON": str(DIFFUSERS_PYTHON)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# GPU check (dry run: CPU, tiny sizes)")
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    has_diffusers = DIFFUSERS_PYTHON.is_file()  # the comparison against diffusers runs where its venv is, else says why not
    assert len(rows) == 4 + has_diffusers and all("| ok |" in row for row in rows), summary
    if has_diffusers:
        (row,) = json.loads((tmp_path / "diffusers-cpu-tiny.json").read_text())["rows"]
        assert (row["net"], row["dtype"]) == ("kandinsky_unet", "fp32") and row["check"]["ok"] is True and not row["errors"]
        assert row["ours_peak"] is not None and row["diffusers_peak"] is not None
    else:
        assert f"- diffusers comparison: skipped, no python with diffusers at {DIFFUSERS_PYTHON}" in summary
    worker = json.loads((tmp_path / "benchmark-ours.json").read_text().splitlines()[-1])
    assert worker["case"] == "prior_sample" and worker["steps"] == 1 and worker["seconds_per_step"] > 0
    karlo = json.loads((tmp_path / "karlo-cpu-tiny.json").read_text())
    assert not [r for r in karlo["rows"] if "error" in r]
    assert [r["net"] for r in karlo["rows"]] == ["prior", "decoder", "super_res", "image (offload)"]
    assert all(r["finite"] for r in karlo["rows"])
    (offload,) = [r for r in karlo["rows"] if r["net"] == "image (offload)"]  # the whole tiny pipeline, offloaded
    assert offload["finite"] and offload["shape"][0] == 1 and 0 < offload["largest_bytes"] < offload["weights_bytes"]
    assert all(karlo["flops"][net] > 0 for net in ("prior", "decoder", "super_res"))
    assert "(karlo-cpu-tiny.md" not in summary and (tmp_path / "karlo-cpu-tiny.md").is_file()
    kandinsky = json.loads((tmp_path / "kandinsky-cpu-tiny.json").read_text())  # the pipeline, the tiny fixture converted
    assert [(r["offload"], r["size"]) for r in kandinsky["rows"]] == [(False, 16), (False, 32), (True, 16), (True, 32)]
    assert all(r["finite"] and r["seconds"] > 0 and r["peak_bytes"] > 0 for r in kandinsky["rows"])
