#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with the project installed (editable).
#   scripts/setup.sh          the runtime
#   scripts/setup.sh --dev    also the test and training dependencies, the RTSP test server and
#                             Chromium for the web page's browser test
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
if [[ "${1:-}" == "--dev" ]]; then
    extra="[dev]"
    # A real RTSP server on loopback for the stream tests (Debian packages; needs root).
    if [[ $(id -u) == 0 ]]; then
        bash .ci/install-rtsp-server.sh
        # A browser failing to install costs its test only (skipped with the reason), not the setup.
        sh .ci/install-browser.sh || echo "setup: Chromium could not be installed (the browser test will be skipped)" >&2
    else
        echo "setup: not root, skipping the RTSP test server and Chromium (their tests will be skipped)" >&2
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
