#!/usr/bin/env bash
# Rebuild the models that ship inside ferkit (src/ferkit/weights/ferkit-fer2013{,-fast}.*), end to end:
#   FERKIT_DATA=../shared/data/fer2013.csv.gz bash bench/ship.sh [RUNS_DIR] [CARD]
# 1. the cnn recipe (50 epochs) and the cpu60 recipe (57 minutes of wall time),
# 2. their PublicTest-weighted ensemble as the teacher, distilled into a third model (cpu60_distilled),
# 3. the three soft-voting with weights fitted on PublicTest (runs/ensemble3.json),
# 4. the vgg recipe (60 epochs), and its PublicTest-weighted vote with the three (two votes, flip TTA),
#    written with `ferkit ship` in int8: CARD,
# 5. CARD distilled into the width-24 fast recipe (100 minutes), shipped single-crop as CARD's `-fast` twin.
# About nine hours on a 2-core CPU (vgg alone 2.5-3.5). A finished step is skipped; an interrupted
# training resumes.
# PrivateTest is never read for a choice: checkpoints and ensemble weights come from PublicTest.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
card=${2:-src/ferkit/weights/ferkit-fer2013.json}

train() {  # train RECIPE [extra ferkit train options]
    local recipe=$1 out=$runs/$1
    shift
    [ -f "$out/summary.json" ] && return
    local resume=()
    [ -f "$out/last.pth" ] && resume=(--resume)
    ferkit train --config "configs/$recipe.yaml" --output_dir "$out" --save_best_to '' --no-progress \
        --wandb disabled "${resume[@]}" "$@"
}

ensemble() {  # ensemble SPEC MEMBER...
    local spec=$1
    shift
    ferkit ensemble --model_paths "$@" --weights fit --split PublicTest --tta flip --save "$spec" \
        --wandb disabled
}

train cnn
train cpu60
ensemble "$runs/teacher.json" "$runs/cnn/best.pth" "$runs/cpu60/best.pth"
train cpu60_distilled --teacher "$runs/teacher.json"
ensemble "$runs/ensemble3.json" "$runs/cnn/best.pth" "$runs/cpu60/best.pth" "$runs/cpu60_distilled/best.pth"
train vgg
ensemble "$runs/shipped.json" "$runs/ensemble3.json" "$runs/vgg/best.pth"
ferkit ship --model_path "$runs/shipped.json" --output "$card" --tta flip --weights_dtype int8 \
    --name ferkit-fer2013 --command "FERKIT_DATA=fer2013.csv.gz bash bench/ship.sh"
train fast --teacher "$card"
ferkit ship --model_path "$runs/fast/best.pth" --output "${card%.json}-fast.json" --tta none \
    --name ferkit-fer2013-fast --command "FERKIT_DATA=fer2013.csv.gz bash bench/ship.sh"
