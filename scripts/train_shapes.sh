#!/usr/bin/env bash
# The exact recipe behind dalle2_core/bundled/shapes: render the shapes world, train every stage with
# `dream train` on CPU, write the bundled folder (float16 weights + measured sampling defaults) and
# score it with `dream eval shapes`.
#
#   scripts/train_shapes.sh                  # from the repository root; WORK=$TMPDIR/shapes-run by default
#   WORK=runs/shapes OUT=runs/my-shapes scripts/train_shapes.sh   # keep the shipped folder untouched
#
# Each stage is its own `dream train` call so that it gets its own batch size and learning rate; the
# later calls pass --resume to add a stage to the same run folder. Threads: both cores (set
# OMP_NUM_THREADS=1 if something else keeps a core busy: two OpenMP threads then spin-wait on each other).
#
# Wall time on 2 CPU cores (OMP_NUM_THREADS=2): about 6 h in all, most of it the base unet's 24,000 steps.
#
# Why this recipe (each choice found with `dream eval shapes` and scripts/shapes_clip_probe.py):
# - the decoder can only draw what the CLIP image embedding encodes: a batch of 256 (more negatives per
#   step) with cosine decay makes the CLIP read the shape and position of small objects, which batch 64 did not.
# - small shapes are a few pixels at 32 px: the base unet gets width 32 (not 16) and 8,000 steps, and the
#   upsampler also reads the text and learns to undo blur (it is trained on blurred low-res input).
# - the base unet then gets four more 4,000-step cosine cycles, each resumed from the last (the rate
#   restarts), which kept raising small-shape accuracy. The model's figures: benchmarks/results/shapes-eval.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-${TMPDIR:-/tmp}/shapes-run}
OUT=${OUT:-dalle2_core/bundled/shapes}
NUM=${NUM:-16000}                     # training images (the seen split has 1,470 compositions)
CLIP_STEPS=${CLIP_STEPS:-2000}
PRIOR_STEPS=${PRIOR_STEPS:-3000}
UNET1_STEPS=${UNET1_STEPS:-8000}
UNET1_MORE=${UNET1_MORE:-"4000 4000 4000 4000"}  # steps of each further cosine cycle of the base unet
UNET2_STEPS=${UNET2_STEPS:-3000}
EVAL_NUM=${EVAL_NUM:-200}             # prompts per split for the final score
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export HF_HUB_OFFLINE=1               # nothing here downloads

RUN="$WORK/run"
DATA="$WORK/data"
CONFIG=scripts/shapes_config.json
START=$(date +%s)
stamp() { echo "[$(( $(date +%s) - START ))s] $*" >&2; }

stamp "data: $NUM images"
dream data shapes --out "$DATA" --num "$NUM" --seed 0 --quiet

train() { nice -n 5 dream train --data "$DATA" --out "$RUN" --config "$CONFIG" --device cpu --seed 0 "$@"; }
stamp "clip"
train --stage clip --steps "$CLIP_STEPS" --batch-size 256 --lr 5e-4 --lr-decay cosine
# the decoder is conditioned on this CLIP's image embedding: check it can read every attribute
python scripts/shapes_clip_probe.py "$RUN" --num 300 --seed 0
stamp "prior"
train --stage prior --resume --steps "$PRIOR_STEPS" --batch-size 64 --lr 1e-3
stamp "decoder unet 1 (32 px)"
train --stage decoder --unet 1 --resume --steps "$UNET1_STEPS" --batch-size 32 --lr 1e-3 --lr-decay cosine
UNET1_TOTAL=$UNET1_STEPS
for more in $UNET1_MORE; do
    UNET1_TOTAL=$((UNET1_TOTAL + more))
    stamp "decoder unet 1, one more cosine cycle: to $UNET1_TOTAL steps"
    train --stage decoder --unet 1 --resume --steps "$UNET1_TOTAL" --batch-size 32 --lr 1e-3 --lr-decay cosine
done
stamp "decoder unet 2 (32 -> 64 px, text-conditioned, trained on 32 px crops of blurred low-res input)"
train --stage decoder --unet 2 --resume --steps "$UNET2_STEPS" --batch-size 32 --lr 1e-3 --lr-decay cosine
stamp "training done"

# float16 weights (loading casts back to the requested precision) and the sampling defaults chosen
# with `dream eval shapes` sweeps over sampler, steps and guidance scales
# (on the 24,000-step base unet, 50 base steps and 4 prior candidates scored no better: 94.0 / 89.0 % all five)
python scripts/bundle_shapes.py "$RUN" "$OUT" \
    --sampler dpmpp_sde --steps 25,25 --prior-steps 25 --cond-scale 5,1 --prior-cond-scale 1 --prior-samples 2
stamp "bundled into $OUT ($(du -sh "$OUT" | cut -f1))"

dream eval shapes --model "$OUT" --num "$EVAL_NUM" --seed 0
stamp "done"
