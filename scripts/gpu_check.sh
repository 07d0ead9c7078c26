#!/usr/bin/env bash
# Everything a short GPU session should measure, in one run (under 8 minutes on one GPU):
#   1. the model and engine tests, then the shipped models on CUDA against the CPU (fp16 vs fp32);
#   2. the torch-CUDA fp16 benchmark (run_stream.py --benchmark) at 1280x720 and 1920x1080, with one
#      face (the sample clip) and four (the clip tiled 2 x 2), FRAMES frames each; at 1920x1080 also
#      with the generator replayed as CUDA graphs (--cuda-graphs).
# Writes OUT/summary.json (one row per configuration), OUT/summary.txt (the table), and each
# benchmark's JSON and PNG (per-stage time per frame) under OUT/bench_SIZE_FACESface_MODE/.
#
#   scripts/gpu_check.sh OUT                 # on the GPU machine (the run tool: OUT="$OUT")
#   DEVICE=cpu FRAMES=3 scripts/gpu_check.sh OUT   # the same steps on a CPU: a smoke run of the script
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?output folder}
device=${DEVICE:-cuda}
frames=${FRAMES:-300}
py=${PYTHON:-python}
mkdir -p "$out"
clip=samples/office_worker_720x404.mp4

"$py" - "$device" <<'PY'
import sys, torch
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("error: no CUDA device (DEVICE=cpu runs the same steps on a CPU)")
print("device:", torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch", torch.__version__)
PY

if [[ "$device" == "cuda" ]]; then
    "$py" -m pytest -q tests/test_engines.py tests/test_generator.py tests/test_detector.py tests/test_shipped_models.py \
        tests/test_device_geometry.py \
        2>&1 | tail -n 5 | tee "$out/tests.txt"
fi

# The shipped models on the device against the CPU, on the same inputs (the detector on a frame
# of the sample clip, so that it finds something to compare).
"$py" - "$device" "$out/parity.json" "$clip" <<'PY'
import json, sys
import av
import torch
from engines.registry import load_model
from stream.geometry import Letterbox
device, path, clip = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
with av.open(clip) as container:
    frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
report = {}
for name in ("generator", "detector"):
    cpu = load_model(name, backend="torch", device="cpu")
    dev = load_model(name, backend="torch", device=device)
    if name == "detector":
        hw = tuple(cpu.config.input_size)
        boxed = Letterbox.fit(frame.shape[:2], hw).apply(frame, hw)
        feeds = {"image": torch.from_numpy(boxed).permute(2, 0, 1)[None].float().div(255.0)}
    else:
        feeds = {spec.name: torch.rand(*[2 if isinstance(d, str) else d for d in spec.shape])
                 for spec in cpu.engine.inputs}
    a = cpu.engine.run(feeds)
    b = dev.engine.run({k: v.to(dev.engine.device) for k, v in feeds.items()})
    key = "output" if name == "generator" else "scores"
    n = min(len(a[key]), len(b[key]))
    diff = (a[key][:n].float() - b[key][:n].float().cpu()).abs().max().item() if n else 0.0
    report[name] = {"output": key, "max_abs_diff": diff, "compared": n}
    print(f"{name}: {key} max |cpu - {device}| = {diff:.4f} over {n}")
json.dump(report, open(path, "w"), indent=1)
PY

rows=()
for size in 1280x720 1920x1080; do
    for faces in 1 4; do
        tile=$([[ $faces == 4 ]] && echo 2 || echo 1)
        input="$out/input_${size}_${faces}face.mp4"
        "$py" scripts/resize_clip.py --input "$clip" --output "$input" --size "$size" --tile "$tile" >/dev/null
        # CUDA graphs (the generator replayed, not launched kernel by kernel) at the largest size only,
        # to keep the whole script within its time.
        modes=(eager)
        [[ "$device" == "cuda" && "$size" == 1920x1080 ]] && modes+=(graphs)
        for mode in "${modes[@]}"; do
            bench="$out/bench_${size}_${faces}face_${mode}"
            flags=$([[ $mode == graphs ]] && echo --cuda-graphs || true)
            "$py" run_stream.py --input "$input" --benchmark "$bench" --backend torch --device "$device" $flags \
                --max-frames "$frames" --no-progress > "$bench.txt" 2>&1 || { tail -n 20 "$bench.txt"; exit 1; }
            rows+=("$size $faces $mode $bench/benchmark.json")
        done
        rm -f "$input"
    done
done

"$py" - "$out" "${rows[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], sys.argv[2:]
summary, lines = [], [f"{'input':10s} {'faces':>5s} {'mode':>6s} {'FPS threaded':>13s} {'FPS sequential':>15s} {'latency p50 ms':>15s}"]
for row in rows:
    size, faces, mode, path = row.split(" ", 3)
    b = json.load(open(path))
    threaded, sequential = b.get("threaded", {}), b.get("sequential", {})
    e2e = threaded.get("latency_ms", {}).get("end_to_end", {})
    entry = {"input": size, "faces": int(faces), "mode": mode, "fps_threaded": threaded.get("fps"),
             "fps_sequential": sequential.get("fps"), "latency_p50_ms": e2e.get("p50"), "benchmark": path}
    summary.append(entry)
    lines.append(f"{size:10s} {faces:>5s} {mode:>6s} {entry['fps_threaded'] or float('nan'):13.1f} "
                 f"{entry['fps_sequential'] or float('nan'):15.1f} {entry['latency_p50_ms'] or float('nan'):15.1f}")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
