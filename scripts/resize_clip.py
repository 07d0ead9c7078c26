"""Make a benchmark input at a given resolution from any clip: centre-crop to the target aspect,
resize, encode H.264 (video only).

    python scripts/resize_clip.py --input samples/office_worker_720x404.mp4 --output clip_640x480.mp4 --size 640x480
    python scripts/resize_clip.py --input samples/office_worker_720x404.mp4 --output clip_1280x720.mp4 --size 1280x720
    python scripts/resize_clip.py --input samples/office_worker_720x404.mp4 --output four_1920x1080.mp4 \
        --size 1920x1080 --tile 2     # the clip 2 x 2 times in one frame: four faces
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import cv2
import numpy as np


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError("width and height must be positive and even (yuv420p)")
    return w, h


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--size", type=_size, required=True, metavar="WxH")
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--tile", type=int, default=1, help="repeat the clip N x N times in each frame (N^2 faces)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.tile < 1:
        print("error: --tile must be at least 1", file=sys.stderr)
        return 2
    width, height = args.size
    try:
        with av.open(str(args.input)) as src, av.open(str(args.output), "w") as dst:
            video = src.streams.video[0]
            out = dst.add_stream("libx264", rate=video.average_rate or 25, options={"crf": str(args.crf)})
            out.width, out.height, out.pix_fmt = width, height, "yuv420p"
            frames = 0
            for frame in src.decode(video):
                image = np.tile(frame.to_ndarray(format="rgb24"), (args.tile, args.tile, 1))
                h, w = image.shape[:2]
                # Largest centred window of the target aspect ratio.
                cw, ch = min(w, round(h * width / height)), min(h, round(w * height / width))
                x, y = (w - cw) // 2, (h - ch) // 2
                image = cv2.resize(image[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_AREA)
                for packet in out.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    dst.mux(packet)
                frames += 1
            for packet in out.encode():
                dst.mux(packet)
    except (av.error.FFmpegError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {frames} frames at {width}x{height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
