"""Temporal stability of the streaming pipeline on synthetic masked clips, smoothing on vs off.

    python -m training.evaluation.evaluate_temporal --clips cache/masked_clips --out runs/temporal.json

For every ``<name>_masked.mp4`` in --clips (made by ``training.data.masked_clips``, next to
``<name>_gt.mp4`` and ``<name>_masks.npz``) this runs

    python run_stream.py --input <name>_masked.mp4 --output <work>/<name>_<mode>.mp4 \\
        --detections <work>/<name>_<mode>.jsonl --temporal <mode> --no-progress

for mode ``on`` and ``off`` and compares each output with the ground truth:

- temporal error inside the mask region (``training.metrics.temporal_metrics.temporal_error``): how far
  the output's frame-to-frame change departs from the ground truth's, 0..255 units, lower is
  better; on/off < 1 means smoothing helps;
- mean per-frame PSNR inside the region and over the whole frame (dB, capped at ``PSNR_CAP``);
- CLEAR-MOT identity switches of the written tracks against the clip's face boxes;
- mask IoU: the union of the written tracks' masks against the union of the drawn masks, per
  frame (the masks are exact labels on real video frames, so with smoothing off and the detector
  on every frame it scores the detector itself);
- mask missed: the share of the drawn masks' pixels, over the clip, that the written masks leave out
  (with smoothing on, a mask that trails its face leaves its leading edge out).

The masked input itself is scored too (``input``, column "TE in"): a still mask over the
moving face is a temporally calm but wrong output, a reference point for the temporal error.
So is an output that never changes inside the region (column "TE still",
``training.metrics.temporal_metrics.StillReference``): the ground truth's own motion there. The mask
hides the mouth's part of it, which no reconstruction can follow, so on a clip whose head barely
moves no output gets much below it. And so is the ground truth itself written by the pipeline's
encoder at its default settings (column "TE enc"): what a perfect reconstruction scores once
encoded, since the ground truth's grain changes every frame and the encoder does not keep it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from stream.sink import SinkError, VideoSink
from stream.source import SourceError, VideoFileSource
from training.data.masked_clips import ClipMasks, load_clip_masks
from training.metrics.temporal_metrics import (
    IdSwitchCounter,
    StillReference,
    TemporalErrorAccumulator,
    frame_psnr,
    gradient_magnitude,
)

logger = logging.getLogger(__name__)

MODES = ("on", "off")
# Identical frames have infinite PSNR; a cap keeps means and on-off differences finite.
PSNR_CAP = 100.0


class EvaluationError(RuntimeError):
    """A clip is incomplete, the pipeline failed, or its output does not match the ground truth."""


@dataclass(frozen=True)
class ClipFiles:
    name: str
    masked: Path
    gt: Path
    masks: Path


def find_clips(root: Path, only: Sequence[str] | None = None) -> list[ClipFiles]:
    """Clips in ``root`` that have all three files, sorted by name."""
    clips = []
    for masked in sorted(root.glob("*_masked.mp4")):
        name = masked.name[: -len("_masked.mp4")]
        if only and name not in only:
            continue
        gt, masks = root / f"{name}_gt.mp4", root / f"{name}_masks.npz"
        if not (gt.is_file() and masks.is_file()):
            logger.warning("skipping %s: missing %s", name, gt.name if not gt.is_file() else masks.name)
            continue
        clips.append(ClipFiles(name=name, masked=masked, gt=gt, masks=masks))
    return clips


def stream_command(
    clip: ClipFiles, *, mode: str, output: Path, detections: Path, run_stream: Path, python: str,
    detect_every: str, max_frames: int | None, extra: Sequence[str],
) -> list[str]:
    cmd = [python, str(run_stream), "--input", str(clip.masked.resolve()), "--output", str(output),
           "--detections", str(detections), "--temporal", mode, "--no-progress"]
    # Always passed: run_stream.py's own default schedule may change.
    cmd += ["--detect-every", str(detect_every)]
    if max_frames is not None:
        cmd += ["--max-frames", str(max_frames)]
    return cmd + list(extra)


def run_stream_once(cmd: list[str], *, cwd: Path, timeout: float | None) -> None:
    logger.info("running %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EvaluationError(f"pipeline timed out after {timeout} s: {shlex.join(cmd)}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise EvaluationError(f"pipeline exited with {proc.returncode}: {shlex.join(cmd)}\n{tail}")


def iter_rgb(path: Path) -> Iterator[np.ndarray]:
    """Decoded frames of a video as HxWx3 uint8 RGB."""
    try:
        source = VideoFileSource(path)
    except SourceError as exc:
        raise EvaluationError(f"cannot decode {path}: {exc}") from exc
    with source:
        for frame in source:
            yield frame.image


@dataclass(frozen=True)
class WrittenTrack:
    """One face of a detections record: track id, (4,) float64 xyxy box in frame pixels, and its
    mask as COCO RLE (``{"size": [h, w], "counts": bytes}``, decoded on demand)."""

    track_id: int
    box: np.ndarray
    mask_rle: dict


def read_tracks(path: Path) -> dict[int, list[WrittenTrack]]:
    """Detections JSONL (one ``{"frame": i, "faces": [{"track_id": int, "box": [x1, y1, x2, y2],
    "mask_rle": {"size": [h, w], "counts": str}, ...}]}`` per line) by frame index."""
    tracks: dict[int, list[WrittenTrack]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                tracks[int(record["frame"])] = [
                    WrittenTrack(
                        track_id=int(face["track_id"]),
                        box=np.asarray(face["box"], dtype=np.float64),
                        mask_rle={"size": list(face["mask_rle"]["size"]),
                                  "counts": face["mask_rle"]["counts"].encode("ascii")},
                    )
                    for face in record["faces"]
                ]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise EvaluationError(f"{path}:{n}: bad detections record ({exc})") from exc
    return tracks


def written_mask(tracks: Sequence[WrittenTrack], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the union of the tracks' masks."""
    found = np.zeros(shape, bool)
    for track in tracks:
        if tuple(track.mask_rle["size"]) != tuple(shape):
            raise EvaluationError(f"track mask is {track.mask_rle['size']}, the frame {list(shape)}")
        found |= mask_utils.decode(track.mask_rle).astype(bool)
    return found


def mask_iou(tracks: Sequence[WrittenTrack], region: np.ndarray) -> float | None:
    """IoU of the union of the tracks' masks with ``region`` ((H, W) bool); None when both are
    empty (nothing to find and nothing found)."""
    return _iou(written_mask(tracks, region.shape), region)


def _iou(found: np.ndarray, region: np.ndarray) -> float | None:
    union = np.count_nonzero(found | region)
    return None if union == 0 else np.count_nonzero(found & region) / union


@dataclass(frozen=True)
class OutputMetrics:
    """frames: frames compared; temporal_error: inside the mask region (0..255, lower is better);
    temporal_error_frame: the same over the whole frame; psnr_region / psnr_frame: mean per-frame
    PSNR in dB (each frame capped at PSNR_CAP); id_switches: None without detections;
    matched: fraction of ground-truth face-frames matched to a track (None without detections),
    low when the tracker misses faces or its boxes overlap the ground truth too little to judge
    identities; extra_tracks: tracks per frame matched to no face (duplicates, false positives;
    None without detections); mask_iou: mean per-frame IoU of the written masks with the drawn
    ones (None without detections); sharpness: mean gradient magnitude inside the mask region of
    the output over that of the ground truth (1: as detailed as the real face; a blur is well
    below; frames without a region are skipped); mask_missed: share of the drawn masks' pixels,
    over the clip, outside the written masks (None without detections): mask left unfilled,
    unless the inpainting stage's own margin covers it."""

    frames: int
    temporal_error: float
    temporal_error_frame: float
    psnr_region: float
    psnr_frame: float
    id_switches: int | None
    matched: float | None
    extra_tracks: float | None
    mask_iou: float | None
    sharpness: float = float("nan")
    mask_missed: float | None = None


def measure_output(
    output: Path, gt: Path, masks: ClipMasks, *, detections: Path | None = None,
    max_frames: int | None = None, iou: float = 0.5,
) -> OutputMetrics:
    """Compare a pipeline output video with the ground-truth video frame by frame (in decode
    order), inside the union of the clip's face masks and over the whole frame."""
    region_err, frame_err = TemporalErrorAccumulator(), TemporalErrorAccumulator()
    psnr_region, psnr_frame = [], []
    tracks = read_tracks(detections) if detections is not None else None
    counter = IdSwitchCounter(iou=iou)
    ious: list[float] = []
    missed = drawn = 0
    grad_out, grad_gt = 0.0, 0.0
    limit = len(masks.pts) if max_frames is None else min(max_frames, len(masks.pts))
    t = 0
    for out, ref in zip(iter_rgb(output), iter_rgb(gt)):
        if t >= limit:
            break
        if out.shape != ref.shape:
            raise EvaluationError(f"{output} frame {t} is {out.shape}, ground truth {ref.shape}")
        region = masks.region(t)
        if region.shape != ref.shape[:2]:
            raise EvaluationError(f"masks are {region.shape}, ground truth frames {ref.shape[:2]}")
        region_err.update(out, ref, region)
        frame_err.update(out, ref, np.ones(region.shape, bool))
        psnr_region.append(min(frame_psnr(out, ref, region), PSNR_CAP))
        if region.any():
            grad_out += float(gradient_magnitude(out)[region].mean())
            grad_gt += float(gradient_magnitude(ref)[region].mean())
        psnr_frame.append(min(frame_psnr(out, ref), PSNR_CAP))
        if tracks is not None:
            written = tracks.get(t, [])
            counter.update([(w.track_id, w.box) for w in written], masks.gt_boxes(t))
            found = written_mask(written, region.shape)
            overlap = _iou(found, region)
            if overlap is not None:
                ious.append(overlap)
            missed += np.count_nonzero(region & ~found)
            drawn += np.count_nonzero(region)
        t += 1
    if t == 0:
        raise EvaluationError(f"no frames to compare in {output}")
    if t < limit:
        logger.warning("%s: compared %d frames, the clip has %d", output.name, t, limit)
    finite_region = [p for p in psnr_region if not math.isnan(p)]
    return OutputMetrics(
        frames=t, temporal_error=region_err.value, temporal_error_frame=frame_err.value,
        psnr_region=float(np.mean(finite_region)) if finite_region else float("nan"),
        psnr_frame=float(np.mean(psnr_frame)), id_switches=None if tracks is None else counter.switches,
        matched=None if tracks is None else counter.matched_count / max(counter.gt_count, 1),
        extra_tracks=None if tracks is None else (counter.track_count - counter.matched_count) / t,
        mask_iou=None if tracks is None else float(np.mean(ious)) if ious else float("nan"),
        sharpness=grad_out / grad_gt if grad_gt > 0 else float("nan"),
        mask_missed=None if tracks is None else missed / drawn if drawn else float("nan"),
    )


def write_first_faces(gt: Path, masks: ClipMasks, folder: Path) -> Path:
    """Each face of the clip's first ground-truth frame, cut out twice its box's size, as a PNG in
    ``folder`` (one image per face: run_stream.py takes the largest face of each)."""
    first = next(iter_rgb(gt))
    folder.mkdir(parents=True, exist_ok=True)
    h, w = first.shape[:2]
    for f, box in enumerate(masks.boxes[:, 0]):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1])
        x1, y1 = int(max(cx - half, 0)), int(max(cy - half, 0))
        x2, y2 = int(min(cx + half, w)), int(min(cy + half, h))
        cv2.imwrite(str(folder / f"face{f}.png"), cv2.cvtColor(first[y1:y2, x1:x2], cv2.COLOR_RGB2BGR))
    return folder


@dataclass(frozen=True)
class References:
    """Temporal errors inside the region that a clip's outputs are read against: ``still`` from
    ``still_reference``, ``encoded`` from ``encoded_reference``."""

    still: float
    encoded: float


def still_reference(gt: Path, masks: ClipMasks, *, max_frames: int | None = None) -> float:
    """Temporal error inside the region of an output that holds the first ground-truth frame."""
    still = StillReference()
    limit = len(masks.pts) if max_frames is None else min(max_frames, len(masks.pts))
    for t, ref in enumerate(iter_rgb(gt)):
        if t >= limit:
            break
        still.update(ref, masks.region(t))
    return still.value


def encoded_reference(clip: ClipFiles, output: Path, masks: ClipMasks, *, max_frames: int | None = None) -> float:
    """Temporal error inside the region of the ground truth re-encoded to ``output`` by the
    pipeline's own sink at its default encoder settings."""
    source = VideoFileSource(clip.gt)
    try:
        sink = VideoSink(str(output), source.info)
        try:
            for n, frame in enumerate(source):
                if max_frames is not None and n >= max_frames:
                    break
                sink.write(frame)
        finally:
            sink.close()
    finally:
        source.close()
    return measure_output(output, clip.gt, masks, max_frames=max_frames).temporal_error


def compare(on: OutputMetrics, off: OutputMetrics) -> dict[str, float]:
    """Smoothing's effect: temporal error ratio on/off (below 1 is better), PSNR differences
    on - off (above 0 is better)."""
    return {
        "temporal_error_ratio": on.temporal_error / off.temporal_error if off.temporal_error > 0 else float("nan"),
        "psnr_region_diff": on.psnr_region - off.psnr_region,
        "psnr_frame_diff": on.psnr_frame - off.psnr_frame,
    }


def format_table(results: dict[str, dict[str, OutputMetrics]], references: dict[str, References]) -> str:
    head = (f"{'clip':28s} {'frames':>6s} | {'TE on':>6s} {'TE off':>6s} {'ratio':>6s} {'TE in':>6s} "
            f"{'TE still':>8s} {'TE enc':>6s} | "
            f"{'PSNRr on':>8s} {'off':>6s} {'diff':>6s} | {'PSNRf on':>8s} {'off':>6s} {'diff':>6s} | "
            f"{'IDsw on':>7s} {'off':>4s} | {'match on':>8s} {'off':>5s} | {'extra on':>8s} {'off':>5s} | "
            f"{'mIoU on':>7s} {'off':>5s} | {'missed on':>9s} {'off':>5s} | {'sharp on':>8s} {'off':>5s}")
    lines = [head, "-" * len(head)]

    def ids(m: OutputMetrics) -> str:
        return "-" if m.id_switches is None else str(m.id_switches)

    def matched(m: OutputMetrics) -> str:
        return "-" if m.matched is None else f"{m.matched:.2f}"

    def extra(m: OutputMetrics) -> str:
        return "-" if m.extra_tracks is None else f"{m.extra_tracks:.2f}"

    def iou(m: OutputMetrics) -> str:
        return "-" if m.mask_iou is None else f"{m.mask_iou:.3f}"

    def missed(m: OutputMetrics) -> str:
        return "-" if m.mask_missed is None else f"{m.mask_missed:.3f}"

    for name, r in results.items():
        on, off = r["on"], r["off"]
        c = compare(on, off)
        lines.append(
            f"{name[:28]:28s} {on.frames:6d} | {on.temporal_error:6.2f} {off.temporal_error:6.2f} "
            f"{c['temporal_error_ratio']:6.3f} {r['input'].temporal_error:6.2f} "
            f"{references[name].still:8.2f} {references[name].encoded:6.2f} | "
            f"{on.psnr_region:8.2f} {off.psnr_region:6.2f} "
            f"{c['psnr_region_diff']:+6.2f} | {on.psnr_frame:8.2f} {off.psnr_frame:6.2f} "
            f"{c['psnr_frame_diff']:+6.2f} | {ids(on):>7s} {ids(off):>4s} | {matched(on):>8s} {matched(off):>5s} | "
            f"{extra(on):>8s} {extra(off):>5s} | {iou(on):>7s} {iou(off):>5s} | {missed(on):>9s} {missed(off):>5s} | "
            f"{on.sharpness:8.2f} {off.sharpness:5.2f}"
        )
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=Path, required=True, help="folder made by training.data.masked_clips")
    p.add_argument("--detections-every", default="auto", metavar="N|auto",
                   help="passed to run_stream.py as --detect-every")
    p.add_argument("--max-frames", type=int, help="frames per clip (also passed to run_stream.py)")
    p.add_argument("--out", type=Path, default=Path("runs/temporal.json"), help="JSON results")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these clips")
    p.add_argument("--work", type=Path, help="keep pipeline outputs here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true",
                   help="do not run the pipeline; read <work>/<name>_<mode>.mp4 and .jsonl made before")
    p.add_argument("--run-stream", type=Path, default=Path("run_stream.py"))
    p.add_argument("--stream-args", default="", help="extra run_stream.py arguments, e.g. '--backend torch'")
    p.add_argument("--timeout", type=float, help="seconds per pipeline run")
    p.add_argument("--reference", default="none", choices=["none", "first-frame"],
                   help="first-frame: give run_stream.py --reference with each face of the clip's first "
                        "ground-truth (unmasked) frame, the same-person reference mode")
    p.add_argument("--iou", type=float, default=0.5, help="IoU to match a track to a ground-truth face")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.reuse and args.work is None:
        logger.error("--reuse needs --work")
        return 2
    clips = find_clips(args.clips, args.only) if args.clips.is_dir() else []
    if not clips:
        logger.error("no complete clips in %s", args.clips)
        return 2
    run_stream = args.run_stream.resolve()
    with tempfile.TemporaryDirectory(prefix="temporal_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, OutputMetrics]] = {}
        references: dict[str, References] = {}
        for clip in clips:
            masks = load_clip_masks(clip.masks)
            try:
                results[clip.name] = {"input": measure_output(clip.masked, clip.gt, masks, max_frames=args.max_frames)}
                references[clip.name] = References(
                    still=still_reference(clip.gt, masks, max_frames=args.max_frames),
                    encoded=encoded_reference(clip, work / f"{clip.name}_gt_encoded.mp4", masks,
                                              max_frames=args.max_frames),
                )
            except (EvaluationError, SourceError, SinkError) as exc:
                logger.error("%s: %s", clip.name, exc)
                return 1
            extra = shlex.split(args.stream_args)
            if args.reference == "first-frame":
                extra += ["--reference", str(write_first_faces(clip.gt, masks, work / f"{clip.name}_reference"))]
            for mode in MODES:
                output, detections = work / f"{clip.name}_{mode}.mp4", work / f"{clip.name}_{mode}.jsonl"
                try:
                    if not args.reuse:
                        cmd = stream_command(
                            clip, mode=mode, output=output.resolve(), detections=detections.resolve(),
                            run_stream=run_stream, python=sys.executable, detect_every=args.detections_every,
                            max_frames=args.max_frames, extra=extra,
                        )
                        run_stream_once(cmd, cwd=run_stream.parent, timeout=args.timeout)
                    results[clip.name][mode] = measure_output(
                        output, clip.gt, masks, detections=detections if detections.is_file() else None,
                        max_frames=args.max_frames, iou=args.iou,
                    )
                except (EvaluationError, OSError) as exc:
                    logger.error("%s (%s): %s", clip.name, mode, exc)
                    return 1
    print(format_table(results, references))
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "clips": {
            name: {**{m: asdict(v) for m, v in r.items()}, **compare(r["on"], r["off"]),
                   "temporal_error_still": references[name].still,
                   "temporal_error_encoded": references[name].encoded}
            for name, r in results.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(report), indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
