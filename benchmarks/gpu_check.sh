#!/usr/bin/env bash
# Everything worth knowing from one lent GPU, in <= 8 minutes, no network, all under one results folder:
#   1. the CUDA tests (pytest -k "gpu or cuda")
#   2. the benchmark table against DALLE2-pytorch 1.15.6, bf16 then fp32 (time ratio, images/s, FLOP/s and
#      fraction of the card's peak, peak memory), default path and the compiled path (--ours-fast)
#      (the table's decoder_train_seed_64 row: decoder training step time and MFU)
#   3. against diffusers, network by network (diffusers_compare.py): the Karlo and Kandinsky 2.2 decoder U-Nets at
#      full size, same weights, bf16 and fp32: s/call ratio, peak memory, outputs checked equal
#   4. `dream --model shapes --device cuda -n 8` end to end (timed, the PNGs kept)
#   5. Karlo-sized networks in fp16: s/step, one 256 px image's peak, and the same image with the networks offloaded
#   6. Kandinsky 2.2 at full size in fp16 (random weights from the Hub's configs) through its pipeline: s/image at 512 and
#      768 px (prior 25 steps, decoder 100), peak memory, with and without offload
#
#   bash benchmarks/gpu_check.sh [--out DIR]      # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run        # anywhere, CPU, tiny sizes, seconds: checks the script works
#
# Needs on the GPU machine (it has no network): this checkout with dalle2_core importable by OURS_PYTHON (default:
# python3; e.g. the project venv carried along), and for step 2 the peer's venv at PEER_VENV (default
# /work/scratch/peervenv: `python3 -m venv` + `pip install torch==<ours> dalle2-pytorch==1.15.6`, made beforehand and
# carried, ~2 GB with CUDA torch), and for step 3 a python with diffusers and torch at DIFFUSERS_PYTHON (default
# /work/scratch/hf/bin/python). Without them those steps are skipped and the summary says so; nothing is installed.
# Each step has its own time limit (40-150 s), cut to what is left of 470 s: the whole stays under 8 minutes; a step
# that times out, or finds the time spent, is reported in the summary and the others still run.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dry=0
out="$here/results/gpu-check-$(date +%Y%m%dT%H%M)"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
OURS_PYTHON="${OURS_PYTHON:-python3}"
PEER_VENV="${PEER_VENV:-/work/scratch/peervenv}"
DIFFUSERS_PYTHON="${DIFFUSERS_PYTHON:-/work/scratch/hf/bin/python}"
budget=470  # seconds, all steps together
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
summary="$out/summary.md"
device=cuda
[ "$dry" = 1 ] && device=cpu
{
  echo "# GPU check ($([ "$dry" = 1 ] && echo "dry run: CPU, tiny sizes" || echo "$device"))"
  echo
  echo "- Date: $(date -Iminutes); commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- Device: $("$OURS_PYTHON" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")' 2>&1)"
  echo "- torch: $("$OURS_PYTHON" -c 'import torch; print(torch.__version__)' 2>&1)"
  echo
  echo "| step | status | seconds | output |"
  echo "|---|---|---|---|"
} > "$summary"

# step NAME LIMIT LOGFILE COMMAND...: runs it with a time limit (at most what is left of the budget), one summary row
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local start=$SECONDS rc left=$((budget - SECONDS))
  if [ "$left" -lt 10 ]; then
    echo "| $name | skipped: the ${budget} s budget is spent | 0 | — |" >> "$summary"
    echo "$name: skipped, budget spent" >&2
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  timeout "$limit" "$@" > "$out/$log" 2>&1
  rc=$?
  local status="ok"
  [ $rc -eq 124 ] && status="timed out after ${limit}s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc)"
  echo "| $name | $status | $((SECONDS - start)) | $log |" >> "$summary"
  echo "$name: $status" >&2
}

limit=40
notes=()
has_diffusers=0
"$DIFFUSERS_PYTHON" -c "import diffusers" 2>/dev/null && has_diffusers=1
no_diffusers="- diffusers comparison: skipped, no python with diffusers at $DIFFUSERS_PYTHON (set DIFFUSERS_PYTHON)"
if [ "$dry" = 1 ]; then
  step "CUDA tests (collected only)" "$limit" cuda-tests.log \
    "$OURS_PYTHON" -m pytest -q --collect-only -k "gpu or cuda" "$root/tests/networks/test_decoder.py" "$root/tests/networks/test_perf_choices.py"
  # the table needs both libraries; the dry run measures one tiny case of ours through the same worker
  step "benchmark worker (ours, prior_sample, 1 step)" "$limit" benchmark-ours.json \
    env OMP_NUM_THREADS=1 "$OURS_PYTHON" "$here/worker.py" --impl ours --case prior_sample --sample-steps 1 --iters 1 --threads 1
  notes+=("- benchmark table: not run in a dry run (on a GPU: peer_compare.py --device cuda, bf16 and fp32, and --ours-fast)")
  if [ "$has_diffusers" = 1 ]; then
    step "against diffusers (tiny Kandinsky U-Net, fp32)" 100 diffusers.log \
      "$OURS_PYTHON" "$here/diffusers_compare.py" --tiny --nets kandinsky_unet --dtypes fp32 --rounds 1 --threads 1 \
      --ours-python "$OURS_PYTHON" --diffusers-python "$DIFFUSERS_PYTHON" --out "$out/diffusers-cpu-tiny.md"
  else
    notes+=("$no_diffusers")
  fi
  step "Karlo-sized networks (tiny)" 150 karlo.log \
    "$OURS_PYTHON" "$here/karlo_speed.py" --tiny --device cpu --dtypes fp32 --offload --threads 1 --out-dir "$out"
  step "Kandinsky 2.2 pipeline (tiny)" 100 kandinsky.log \
    "$OURS_PYTHON" "$here/kandinsky_speed.py" --tiny --offload --threads 1 --out-dir "$out"
  notes+=("- dream --model shapes --device cuda -n 8: run only on a GPU")
  { echo; printf '%s\n' "${notes[@]}"; } >> "$summary"
  cat "$summary"
  exit 0
fi

step "CUDA tests" "$limit" cuda-tests.log "$OURS_PYTHON" -m pytest -q -rs -k "gpu or cuda" "$root/tests"
if "$PEER_VENV/bin/python" -c "import dalle2_pytorch" 2>/dev/null; then
  cases=(--cases decoder_sample_spec_64 prior_sample decoder_train_seed_64)
  common=(--rounds 1 --iters 3 --sample-steps 8 --device cuda --ours-python "$OURS_PYTHON" --peer-python "$PEER_VENV/bin/python")
  step "table bf16" 110 table-bf16.log "$OURS_PYTHON" "$here/peer_compare.py" "${common[@]}" "${cases[@]}" \
    --precision bf16 --out "$out/cuda-bf16.md"
  step "table fp32" 80 table-fp32.log "$OURS_PYTHON" "$here/peer_compare.py" "${common[@]}" "${cases[@]}" \
    --precision fp32 --out "$out/cuda-fp32.md"
  step "table bf16, ours compiled" 80 table-bf16-fast.log "$OURS_PYTHON" "$here/peer_compare.py" "${common[@]}" \
    --cases decoder_sample_spec_64 --precision bf16 --ours-fast --out "$out/cuda-bf16-ours-fast.md"
else
  notes+=("- benchmark table: skipped, no peer venv at $PEER_VENV (carry one: see the header of this script)")
fi
if [ "$has_diffusers" = 1 ]; then
  step "against diffusers: decoder U-Nets bf16, fp32" 150 diffusers.log \
    "$OURS_PYTHON" "$here/diffusers_compare.py" --device cuda --nets kandinsky_unet karlo_decoder --dtypes bf16 fp32 \
    --rounds 1 --iters 3 --ours-python "$OURS_PYTHON" --diffusers-python "$DIFFUSERS_PYTHON" --out "$out/diffusers-cuda.md"
else
  notes+=("$no_diffusers")
fi
step "dream --model shapes --device cuda -n 8" "$limit" dream-shapes.log \
  "$OURS_PYTHON" -c "from dream_cli import main; main()" --model shapes --device cuda -n 8 --seed 0 --outdir "$out/shapes" \
  "a large red circle on the left on a blue background"
step "Karlo-sized networks fp16 (offload and not)" 130 karlo.log \
  "$OURS_PYTHON" "$here/karlo_speed.py" --device cuda --dtypes fp16 --offload --iters 3 --out-dir "$out"
step "Kandinsky 2.2 fp16, 512 and 768 px (offload and not)" 100 kandinsky.log \
  "$OURS_PYTHON" "$here/kandinsky_speed.py" --device cuda --dtype fp16 --offload --out-dir "$out"
[ ${#notes[@]} -gt 0 ] && { echo; printf '%s\n' "${notes[@]}"; } >> "$summary"
cat "$summary"
