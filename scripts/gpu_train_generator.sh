#!/usr/bin/env bash
# Train generator v2 (reference-conditioned) for a fixed number of minutes on one CUDA GPU.
#
# GPU time here is short and a job carries at most 64 MiB, so the data is packed first, on the
# development machine (faces from the generator's training split only, about 40 MiB):
#
#   python -m training.data.pack_data --split-of generator --faces 4000 --out .gpu_gen
#
# then, on the GPU machine (the run tool: carry .gpu_gen, and runs/gen_v2 to resume a CPU run):
#
#   scripts/gpu_train_generator.sh .gpu_gen "$OUT" 8 [runs/gen_v2]
#
# Writes OUT/gen_v2/generator_128.pt (EMA weights, shipped format), last.pt (to resume anywhere),
# log.jsonl and samples/. With a fourth argument, training resumes from that run's last.pt.
set -euo pipefail
packed=${1:?packed data folder (training.data.pack_data --split-of generator)}
out=${2:?output folder}
minutes=${3:-8}
resume=${4:-}
mkdir -p "$out/gen_v2"
if [[ -n "$resume" && -f "$resume/last.pt" ]]; then
    cp "$resume/last.pt" "$out/gen_v2/last.pt"
fi
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for the GPU machine"
print("cuda:", torch.cuda.get_device_name())
PY
python -m training.train.train_generator --data "$packed/data" --landmarks "$packed/landmarks.npz" \
    --reference --init engines/weights/generator_128.pt --parsing engines/weights/face_parsing.pt \
    --out "$out/gen_v2" --steps 40000 --batch-size 32 --adv-start 300 --adv-weight 0.05 --lr-g 2e-4 \
    --ckpt-every 500 --sample-every 1000 --workers 12 --minutes "$minutes" 2>&1 | tee "$out/gen_v2/train.log"
