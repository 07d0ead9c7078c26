"""A before/after contact sheet: the same frames of several videos side by side, to judge a model
change by eye.

    python -m training.evaluation.contact_sheet --videos in.mp4 v1.mp4 v2.mp4 --labels input v1 v2 \\
        --frames 30 75 120 --out runs/sheet.png

Rows are frames, columns videos (each scaled to ``--height``); ``--crop x1 y1 x2 y2`` cuts the
same region (frame pixels) out of every video first, to look at a face up close.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from stream.source import SourceError, VideoFileSource


class SheetError(RuntimeError):
    """A video is unreadable or shorter than a requested frame."""


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """{index: (H, W, 3) uint8 RGB} for the wanted frame indices of ``path``."""
    wanted, found = set(indices), {}
    try:
        source = VideoFileSource(path)
    except SourceError as exc:
        raise SheetError(f"cannot read {path}: {exc}") from exc
    with source:
        for i, frame in enumerate(source):
            if i in wanted:
                found[i] = frame.image
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise SheetError(f"{path} has no frame {missing[0]}")
    return found


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(videos: list[Path], labels: list[str], frames: list[int], *, height: int = 240,
                  crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(rows * height, sum of widths, 3) uint8 RGB."""
    columns = [read_frames(v, frames) for v in videos]
    rows = []
    for index in frames:
        tiles = []
        for label, col in zip(labels, columns):
            image = col[index]
            if crop is not None:
                x1, y1, x2, y2 = crop
                image = image[y1:y2, x1:x2]
            width = max(1, round(image.shape[1] * height / image.shape[0]))
            tiles.append(_label(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), f"{label} #{index}"))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Same frames of several videos side by side.")
    p.add_argument("--videos", type=Path, nargs="+", required=True)
    p.add_argument("--labels", nargs="+", help="one per video (default: file names)")
    p.add_argument("--frames", type=int, nargs="+", default=[0, 50, 100])
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--crop", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"))
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    labels = args.labels or [v.stem for v in args.videos]
    if len(labels) != len(args.videos):
        print("error: give one label per video", file=sys.stderr)
        return 2
    try:
        sheet = contact_sheet(args.videos, labels, args.frames, height=args.height,
                              crop=tuple(args.crop) if args.crop else None)
    except SheetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
