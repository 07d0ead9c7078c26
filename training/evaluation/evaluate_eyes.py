"""Do no harm above the mask: how often the pipeline's fill reaches a masked face's own eyes.

    python -m training.evaluation.evaluate_eyes --videos ../shared/data/videos/masked/*.mp4 --json runs/eyes.json

Each clip runs through ``run_stream.py`` at default settings (``--stream-args`` adds options) with
``--detections``; on every frame where a face is filled, dlib's 68-point predictor, run on the input
frame inside the written face box, places the eyes (points 36-47). A frame's eyes are altered when
the mean absolute luma difference between output and input inside either eye (its polygon grown
by 1 px) exceeds ``--threshold`` (12: re-encoding alone stays under 9, as in ``evaluate_precision``).
The eyes are visible above a worn mask, so every altered eye is harm.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
from pycocotools import mask as mask_utils

from stream.sink import VideoSink
from stream.source import VideoFileSource
from training.data.landmarks import LandmarkDetector

logger = logging.getLogger(__name__)

EYES = (slice(36, 42), slice(42, 48))


def _frames(path: Path):
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def eyes_altered(before: np.ndarray, after: np.ndarray, landmarks: np.ndarray, threshold: float) -> bool:
    """Whether either eye (68-point ``landmarks`` (68, 2) xy) differs between two (H, W, 3) uint8
    RGB frames by more than ``threshold`` mean absolute luma."""
    diff = np.abs(_luma(before) - _luma(after))
    for eye in EYES:
        region = np.zeros(diff.shape, np.uint8)
        cv2.fillPoly(region, [np.round(landmarks[eye]).astype(np.int32)], 1)
        region = cv2.dilate(region, np.ones((3, 3), np.uint8)) > 0
        if region.any() and float(diff[region].mean()) > threshold:
            return True
    return False


def reencode(video: Path, output: Path) -> None:
    """``video`` written again by the pipeline's sink at its default encoder settings."""
    source = VideoFileSource(video)
    try:
        sink = VideoSink(str(output), source.info)
        try:
            for frame in source:
                sink.write(frame)
        finally:
            sink.close()
    finally:
        source.close()


def measure_clip(video: Path, work: Path, *, run_stream: Path, stream_args: list[str], threshold: float,
                 landmarks: LandmarkDetector) -> dict[str, float | int]:
    out, detections = work / f"{video.stem}.mp4", work / f"{video.stem}.jsonl"
    command = [sys.executable, str(run_stream), "--input", str(video),
               "--output", str(out), "--detections", str(detections), "--no-progress", *stream_args]
    subprocess.run(command, check=True, capture_output=True)
    reference = work / f"{video.stem}_encoded.mp4"
    reencode(video, reference)
    filled_boxes: dict[int, list[np.ndarray]] = {}
    for line in detections.read_text().splitlines():
        record = json.loads(line)
        for face in record["faces"]:
            rle = dict(face["mask_rle"], counts=face["mask_rle"]["counts"].encode())
            if mask_utils.decode(rle).any():
                filled_boxes.setdefault(record["frame"], []).append(np.asarray(face["box"], np.float32))
    filled = altered = 0
    for index, (source, encoded, after) in enumerate(zip(_frames(video), _frames(reference), _frames(out))):
        boxes = filled_boxes.get(index)
        if not boxes:
            continue
        filled += 1
        altered += any(eyes_altered(encoded, after, landmarks.detect_in_box(source, box), threshold) for box in boxes)
    return {"filled_frames": filled, "eyes_altered": altered, "share": altered / filled if filled else 0.0}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, nargs="+", required=True, help="real masked clips")
    p.add_argument("--work", type=Path, default=Path("runs/eyes"), help="where the outputs are written")
    p.add_argument("--run-stream", type=Path, default=Path(__file__).resolve().parents[2] / "run_stream.py",
                   help="the run_stream.py to measure (another checkout's, for a before/after)")
    p.add_argument("--stream-args", default="", help="extra run_stream.py options, one string")
    p.add_argument("--threshold", type=float, default=12.0)
    p.add_argument("--json", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    landmarks = LandmarkDetector()
    results = {}
    for video in args.videos:
        results[video.name] = measure_clip(video, args.work, run_stream=args.run_stream,
                                           stream_args=shlex.split(args.stream_args),
                                           threshold=args.threshold, landmarks=landmarks)
    filled = sum(r["filled_frames"] for r in results.values())
    altered = sum(r["eyes_altered"] for r in results.values())
    print(f"{'clip':40s} {'filled':>7s} {'eyes altered':>13s}")
    for name, r in results.items():
        print(f"{name:40s} {r['filled_frames']:7d} {r['eyes_altered']:6d} ({100 * r['share']:5.1f} %)")
    print(f"{'all':40s} {filled:7d} {altered:6d} ({100 * altered / max(filled, 1):5.1f} %)")
    if args.json:
        args.json.write_text(json.dumps({"clips": results, "filled_frames": filled, "eyes_altered": altered}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
