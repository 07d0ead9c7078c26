"""Live latency as a camera user sees it: a loopback RTSP server serves a real clip at its frame
rate, ``run_stream.py`` (defaults, or the options after ``--``) reads it live and writes a file,
and its report gives the pipeline's latency (decoded frame to encoded frame), drops, FPS, how
stale the detector's boxes were and how memory grew.

    python scripts/live_latency.py --clip samples/office_worker_720x404.mp4 --size 640x480 --frames 200
    python scripts/live_latency.py --clip samples/office_worker_720x404.mp4 -- --live off

Needs the GStreamer RTSP server (``.ci/install-rtsp-server.sh``). Prints one table and writes
OUT/report.json (run_stream's report) and OUT/live.mp4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.rtsp_server import RtspServerError, RtspTestServer, rtsp_server_available  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, required=True, help="the video the server plays")
    p.add_argument("--size", type=_size, default=(640, 480), help="served WIDTHxHEIGHT")
    p.add_argument("--fps", type=int, default=25, help="served frame rate")
    p.add_argument("--frames", type=int, default=200,
                   help="frames to process (keep under the clip's length: the stream ends with it)")
    p.add_argument("--out", type=Path, default=Path("runs/live_latency"))
    p.add_argument("run_stream_args", nargs="*", help="after --: more run_stream.py options")
    return p


def format_report(report: dict, fps: int) -> str:
    run = report["run"]
    e2e = run["latency_ms"].get("end_to_end", {})
    read = max(run["frames_read"], 1)
    lines = [
        f"mode {report.get('mode')}, served at {fps} fps: {run['frames_written']} frames written, "
        f"{run['frames_dropped']} dropped ({100 * run['frames_dropped'] / read:.1f} %), {run['fps']:.1f} FPS",
        f"latency (decoded -> encoded): p50 {e2e.get('p50', float('nan')):.0f} ms, "
        f"p95 {e2e.get('p95', float('nan')):.0f} ms",
    ]
    if "detection_staleness_frames" in run:
        s = run["detection_staleness_frames"]
        lines.append(f"detector boxes late by {s['mean']:.2f} frames on average, {s['max']} at most")
    if "memory_mb" in run:
        m = run["memory_mb"]
        lines.append(f"memory: {m['after_warmup']:.0f} MB after warm-up, {m['growth']:+.1f} MB by frame {m['frames']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.clip.is_file():
        print(f"error: {args.clip}: no such file", file=sys.stderr)
        return 1
    if not rtsp_server_available():
        print("error: the GStreamer RTSP server is not installed (.ci/install-rtsp-server.sh)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "report.json"
    w, h = args.size
    try:
        with RtspTestServer(width=w, height=h, fps=args.fps, file=args.clip) as server:
            cmd = [sys.executable, str(ROOT / "run_stream.py"), "--input", server.url, "--output",
                   str(args.out / "live.mp4"), "--report", str(report_path), "--max-frames", str(args.frames),
                   "--no-progress", *args.run_stream_args]
            code = subprocess.run(cmd, cwd=ROOT).returncode
    except RtspServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if code != 0:
        print(f"error: run_stream.py exited with {code}", file=sys.stderr)
        return 1
    print(format_report(json.loads(report_path.read_text()), args.fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
