"""benchmarks/diffusers_compare.py: its output check, and (where the diffusers venv exists) a tiny run end to end."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
DIFFUSERS_PYTHON = Path(os.environ.get("DIFFUSERS_PYTHON", "/work/scratch/hf/bin/python"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import diffusers_compare  # noqa: E402


def _write(folder: Path, label: str, dtype: str, out: torch.Tensor) -> None:
    save_file({"out": out.contiguous()}, str(folder / f"out-{label}-{dtype}.safetensors"))


def test_check_outputs_scales_its_tolerance_by_the_output_and_by_diffusers_own_bf16_error(tmp_path):
    folder = tmp_path / "kandinsky_unet"
    folder.mkdir()
    ref = torch.linspace(-2.0, 2.0, 64).reshape(1, 1, 8, 8)
    args = Namespace(work=tmp_path, ours_paths=["eager", "channels_last"])
    _write(folder, "diffusers", "fp32", ref)
    _write(folder, "ours-eager", "fp32", ref + 1e-5)  # within 1e-4 x max |ref| = 2e-4
    _write(folder, "ours-channels_last", "fp32", ref + 1e-3)  # outside
    fp32 = diffusers_compare.check_outputs("kandinsky_unet", "fp32", args)
    assert fp32["eager"]["ok"] is True and fp32["channels_last"]["ok"] is False
    assert fp32["eager"]["tolerance"] == pytest.approx(2e-4) and fp32["eager"]["max_abs_diff"] == pytest.approx(1e-5, abs=1e-6)
    _write(folder, "diffusers", "bf16", ref + 0.01)  # diffusers' own bf16 error: 0.01, so ours may be 0.02 away from it
    _write(folder, "ours-eager", "bf16", ref + 0.025)
    _write(folder, "ours-channels_last", "bf16", ref - 0.005)
    bf16 = diffusers_compare.check_outputs("kandinsky_unet", "bf16", args)
    assert bf16["eager"]["tolerance"] == pytest.approx(0.02, rel=1e-3) and bf16["eager"]["ok"] is True
    assert bf16["channels_last"]["max_abs_diff"] == pytest.approx(0.015, abs=1e-5) and bf16["channels_last"]["ok"] is True
    _write(folder, "ours-eager", "bf16", ref + 0.05)
    assert diffusers_compare.check_outputs("kandinsky_unet", "bf16", args)["eager"]["ok"] is False
    _write(folder, "ours-eager", "bf16", ref[..., :4])
    assert diffusers_compare.check_outputs("kandinsky_unet", "bf16", args)["eager"]["ok"] is False  # a wrong shape fails


@pytest.mark.skipif(not DIFFUSERS_PYTHON.is_file(), reason=f"no diffusers venv at {DIFFUSERS_PYTHON} (set DIFFUSERS_PYTHON)")
def test_tiny_karlo_decoder_against_diffusers_same_outputs_in_fp32_and_bf16(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "diffusers-cpu-tiny.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diffusers_compare.py"), "--tiny", "--nets", "karlo_decoder",
                           "--dtypes", "bf16", "fp32", "--rounds", "1", "--threads", "1", "--skip-memory",
                           "--diffusers-python", str(DIFFUSERS_PYTHON), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["net"], r["dtype"], r["path"]) for r in rows] == [("karlo_decoder", "bf16", "eager"), ("karlo_decoder", "fp32", "eager")]
    assert all(not r["errors"] and r["check"]["ok"] is True and r["ratio"] > 0 for r in rows), rows
    # bf16 measured first: its tolerance comes from diffusers' fp32 output, made for it before fp32's own rounds
    assert rows[0]["check"]["tolerance"] == pytest.approx(2 * rows[0]["check"]["diffusers_own_error"]) and rows[0]["check"]["tolerance"] > 0
    assert rows[1]["check"]["max_abs_diff"] <= 1e-4 * rows[1]["check"]["max_abs"]
    assert out.read_text().startswith("# dalle2_core vs diffusers") and "tiny configs" in out.read_text().splitlines()[0]
