#!/usr/bin/python3
"""Serve a live H.264 test pattern over RTSP on loopback, for the streaming tests.

Runs under the *system* python (``/usr/bin/python3``), which has PyGObject and the
GStreamer RTSP server; the project venv has neither. Install them with
``.ci/install-rtsp-server.sh``.

The stream is a moving-ball ``videotestsrc`` with its buffer time burnt into the
top-left corner (``timeoverlay``; at a fixed frame rate that is frame number / fps,
so dropped or repeated frames are visible by eye), encoded with x264 in
zero-latency mode, one key frame per second. The media is shared, so several clients
see the same pipeline; when the last client leaves it is torn down and the next
client starts a fresh one (frame counter back at 0).

Stdout carries exactly one line, ``READY rtsp://127.0.0.1:PORT/MOUNT``, once the
socket is listening; diagnostics go to stderr. SIGTERM or SIGINT stops the server.

    /usr/bin/python3 tests/gst_rtsp_serve.py --port 8554 --mount /test
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

HOST = "127.0.0.1"


def build_launch(*, width: int, height: int, fps: int, file: str | None = None, audio: str | None = None) -> str:
    """Return the gst-launch description of the served media (payloader named pay0).

    With ``file``, that video (decoded, scaled to width x height at fps) instead of the test
    pattern; the RTSP server paces it at its frame rate, as a camera would deliver it. With
    ``audio`` ("opus" or "pcma", the G.711 a-law of many IP cameras), a live 440 Hz tone as
    well (payloader pay1)."""
    if file is not None:
        source = (
            f"filesrc location=\"{file}\" ! decodebin ! videoconvert ! videoscale ! videorate "
            f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
        )
    else:
        source = (
            f"videotestsrc is-live=true pattern=ball "
            f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
            f"! timeoverlay font-desc=\"Sans {max(height // 12, 8)}\" "
        )
    video = (
        f"{source}"
        f"! videoconvert "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} threads=1 "
        f"! video/x-h264,profile=constrained-baseline "
        f"! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    if audio is None:
        return video
    encode = {"opus": "opusenc ! rtpopuspay", "pcma": "alawenc ! rtppcmapay"}[audio]
    return (f"{video} audiotestsrc is-live=true freq=440 ! audioconvert ! audioresample "
            f"! audio/x-raw,rate={48000 if audio == 'opus' else 8000},channels=1 ! {encode} name=pay1 pt=97")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1")
    parser.add_argument("--mount", default="/test", help="mount point, starting with '/'")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--file", help="serve this video file (at --fps, scaled) instead of the test pattern")
    parser.add_argument("--audio", choices=["opus", "pcma"], help="serve a live tone as well, in this codec")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only verify that the pipeline can be built, then exit 0 (or 1)",
    )
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.mount.startswith("/"):
        print(f"mount must start with '/': {args.mount!r}", file=sys.stderr)
        return 2
    Gst.init(None)
    launch = build_launch(width=args.width, height=args.height, fps=args.fps, file=args.file, audio=args.audio)

    # The RTSP server only builds the pipeline when a client connects; building it
    # once here turns a missing plugin into an immediate, visible startup failure.
    try:
        Gst.parse_launch(launch).set_state(Gst.State.NULL)
    except GLib.Error as exc:
        print(f"cannot build pipeline: {exc.message}", file=sys.stderr)
        return 1
    if args.check:
        return 0

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {launch} )")
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on {HOST}:{args.port}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)

    print(f"READY rtsp://{HOST}:{server.get_bound_port()}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
