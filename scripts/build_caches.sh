#!/usr/bin/env bash
# Builds every training/evaluation cache under cache/ from the shared data (about 6 minutes on
# 2 cores). cache/ is not versioned, so a fresh checkout starts without it; caches already there
# are kept (delete one to rebuild it).
#   scripts/build_caches.sh [DATA]     DATA: the shared data root, default ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
[[ -d "$DATA/faces/utkface" ]] || { echo "error: no shared data at $DATA" >&2; exit 1; }
mkdir -p cache

build() {  # build OUTPUT MODULE ARGS...: run the module unless OUTPUT exists
    local out=$1 module=$2; shift 2
    if [[ -e "$out" ]]; then echo "build_caches: $out exists"; return; fi
    echo "build_caches: $out"
    "$PY" -m "$module" "$@"
}

# Independent of each other: the dlib landmarks of UTKFace (the longest) beside the rest.
build cache/utkface_landmarks.npz training.data.landmarks \
    --images "$DATA/faces/utkface" --out cache/utkface_landmarks.npz &
landmarks=$!
build cache/negative_faces.npz training.data.negatives --data "$DATA" --out cache/negative_faces.npz
# Labelled by the shipped detector and verifier: rebuild it when those weights change.
build cache/masked_pseudo.npz training.data.pseudo_masks --data "$DATA" --out cache/masked_pseudo.npz --threads 1
build cache/masked_clips training.data.masked_clips --videos "$DATA/videos/unmasked" \
    --templates "$DATA/mask_templates" --out cache/masked_clips
wait "$landmarks"
echo "build_caches: done"
