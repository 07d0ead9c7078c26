#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with the project installed (editable).
#   scripts/setup.sh          the runtime
#   scripts/setup.sh --dev    also the test and training dependencies, and the RTSP test server
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
if [[ "${1:-}" == "--dev" ]]; then
    extra="[dev]"
    # A real RTSP server on loopback for the stream tests (Debian packages; needs root).
    if [[ $(id -u) == 0 ]]; then
        bash .ci/install-rtsp-server.sh
    else
        echo "setup: not root, skipping the RTSP test server (its tests will be skipped)" >&2
    fi
fi
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned to the CUDA-enabled build that this project is tested with; pip takes it from a local
# wheel cache where one exists instead of downloading it again.
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".${extra}"
python -c "import torch, av, cv2, onnxruntime; print('setup: ok, torch', torch.__version__)"
