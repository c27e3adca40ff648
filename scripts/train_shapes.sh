#!/usr/bin/env bash
# The exact recipe behind dalle2_core/bundled/shapes: render the shapes world, train every stage with
# `dream train` on CPU, write the bundled folder (float16 weights + measured sampling defaults) and
# score it with `dream eval shapes`.
#
#   scripts/train_shapes.sh                  # from the repository root; WORK=/tmp/shapes-run by default
#   WORK=/somewhere OUT=/tmp/my-shapes scripts/train_shapes.sh   # keep the shipped folder untouched
#
# Each stage is its own `dream train` call so that it gets its own batch size and learning rate; the
# later calls pass --resume to add a stage to the same run folder. Threads: one per process, because
# on a busy 2-core machine two OpenMP threads spin-wait on each other and run ~10x slower.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-/tmp/shapes-run}
OUT=${OUT:-dalle2_core/bundled/shapes}
NUM=${NUM:-16000}                     # training images (the seen split has 1,470 compositions)
CLIP_STEPS=${CLIP_STEPS:-1500}
PRIOR_STEPS=${PRIOR_STEPS:-3000}
UNET1_STEPS=${UNET1_STEPS:-4000}
UNET2_STEPS=${UNET2_STEPS:-2000}
EVAL_NUM=${EVAL_NUM:-100}             # prompts per split for the final score
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
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
train --stage clip --steps "$CLIP_STEPS" --batch-size 64 --lr 5e-4
stamp "prior"
train --stage prior --resume --steps "$PRIOR_STEPS" --batch-size 64 --lr 1e-3
stamp "decoder unet 1 (32 px)"
train --stage decoder --unet 1 --resume --steps "$UNET1_STEPS" --batch-size 32 --lr 1e-3
stamp "decoder unet 2 (32 -> 64 px, trained on 32 px crops)"
train --stage decoder --unet 2 --resume --steps "$UNET2_STEPS" --batch-size 32 --lr 1e-3
stamp "training done"

# float16 weights (loading casts back to the requested precision) and the sampling defaults chosen
# with `dream eval shapes` sweeps over sampler, steps and guidance scales
python scripts/bundle_shapes.py "$RUN" "$OUT" \
    --sampler ddim --steps 25,15 --prior-steps 25 --cond-scale 1,1 --prior-cond-scale 1 --prior-samples 2
stamp "bundled into $OUT ($(du -sh "$OUT" | cut -f1))"

dream eval shapes --model "$OUT" --num "$EVAL_NUM" --seed 0
stamp "done"
