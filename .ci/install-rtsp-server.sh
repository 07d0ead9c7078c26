#!/bin/sh
# Installs the GStreamer RTSP server used by tests/gst_rtsp_serve.py (system python3 + gi).
# Idempotent: does nothing when the system python can already import GstRtspServer
# and the elements the test pipeline needs exist (x264enc: -ugly, timeoverlay: -x).
set -eu

PACKAGES="python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp \
gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
gstreamer1.0-plugins-ugly gstreamer1.0-x"

ready() {
    /usr/bin/python3 - <<'PY' >/dev/null 2>&1
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [name for name in ("videotestsrc", "timeoverlay", "x264enc", "rtph264pay")
           if Gst.ElementFactory.find(name) is None]
raise SystemExit(1 if missing else 0)
PY
}

if [ -x /usr/bin/python3 ] && ready; then
    echo "install-rtsp-server: already installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $PACKAGES

if ! ready; then
    echo "install-rtsp-server: GstRtspServer or a required element is still missing" >&2
    exit 1
fi
echo "install-rtsp-server: installed"
