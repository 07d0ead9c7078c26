#!/bin/sh
# Installs Chromium from Debian's packages for the web page's browser test (tests/test_web.py),
# which drives it through Playwright (executable_path, no downloaded browser). Idempotent.
set -eu
if command -v chromium >/dev/null 2>&1; then
    echo "install-browser: already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
command -v chromium >/dev/null 2>&1 || { echo "install-browser: chromium still missing" >&2; exit 1; }
echo "install-browser: installed"
