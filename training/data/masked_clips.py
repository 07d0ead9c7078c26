"""Masked test clips with ground truth, for measuring temporal stability of mask removal.

Each unmasked clip gets a synthetic mask drawn on its face, frame by frame:

    python -m training.data.masked_clips --videos ../shared/data/videos/unmasked \\
        --templates ../shared/data/mask_templates --out cache/masked_clips --max-frames 150

writes, per clip ``<name>``:

- ``<name>_masked.mp4``: the masked video (H.264), input to the pipeline;
- ``<name>_gt.mp4``: the unmasked frames at the same size (H.264 at CRF 8, a fair reference);
- ``<name>_masks.npz``: per-frame mask pixels and face boxes (see ``save_clip_masks``);

plus ``multi_*`` with two clips side by side (two faces, ids 0 left and 1 right) for tracking
checks. Frames keep the source timestamps and are resized so the long side is at most
``--max-side`` (both sides even, as yuv420p H.264 needs).

Landmarks come from dlib (HOG detector on a downscaled frame, 68-point predictor in the box at
full size; the previous box is reused where the detector misses) and are smoothed over time with
a centred Gaussian per point, so the drawn mask does not jitter; the template and its styling
are fixed per clip.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from stream.geometry import box_iou
from stream.records import Frame
from stream.sink import EncoderSettings, VideoSink
from stream.source import SourceError, SourceInfo, VideoFileSource
from training.data.landmarks import LandmarkDetector, LandmarkModelNotFoundError
from training.data.synth import MaskSynthesizer, TemplateConfigError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")
MULTI_NAME = "multi"

# Where the landmarks of a frame came from.
LM_NONE, LM_DETECTED, LM_TRACKED = 0, 1, 2


class ClipError(RuntimeError):
    """A clip cannot be made: unreadable video, or no face found in it."""


@dataclass(frozen=True)
class ClipConfig:
    """max_frames: frames per clip (None: all); max_side: long side of the written frames;
    detect_side: long side of the frame the HOG detector sees; upsample: HOG upsampling;
    smooth_sigma: temporal Gaussian on the landmarks, in frames (0: none); seed: picks the
    template and its styling per clip; masked_crf / gt_crf: x264 quality of the two videos;
    skip_frames: source frames left out before the clip starts (a later part of the same videos
    is a fresh measuring set once the first has judged its rules)."""

    max_frames: int | None = 150
    skip_frames: int = 0
    max_side: int = 640
    detect_side: int = 320
    upsample: int = 1
    smooth_sigma: float = 2.0
    seed: int = 0
    masked_crf: int = 16
    gt_crf: int = 8
    preset: str = "medium"


@dataclass(frozen=True)
class VideoInfo:
    """Source video: size (w, h) in pixels, average frame rate, stream time base."""

    path: Path
    size: tuple[int, int]
    rate: Fraction
    time_base: Fraction


def probe(path: Path) -> VideoInfo:
    try:
        source = VideoFileSource(path)
    except SourceError as exc:
        raise ClipError(f"cannot read video {path}: {exc}") from exc
    with source:
        info = source.info
    rate = Fraction(info.rate or 25)
    return VideoInfo(path=path, size=(info.width, info.height), rate=rate, time_base=Fraction(info.time_base or 1 / rate))


def output_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) scaled down (never up) so the long side is at most ``max_side``, both sides rounded
    to even numbers."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def iter_frames(path: Path, *, size: tuple[int, int], max_frames: int | None,
                skip: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """Decoded frames as (HxWx3 uint8 RGB resized to ``size`` (w, h), pts in stream time base),
    read by the pipeline's own reader (``stream.source.VideoFileSource``), from the ``skip``-th on."""
    try:
        source = VideoFileSource(path)
    except SourceError as exc:
        raise ClipError(str(exc)) from exc
    with source:
        for i, frame in enumerate(itertools.islice(source, skip, None)):
            if max_frames is not None and i >= max_frames:
                break
            rgb = frame.image
            if (rgb.shape[1], rgb.shape[0]) != size:
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            yield rgb, frame.pts


def clip_writer(path: Path, *, size: tuple[int, int], rate: Fraction, time_base: Fraction, crf: int,
                preset: str) -> VideoSink:
    """The pipeline's own H.264 writer (``stream.sink.VideoSink``) for a clip of (w, h) ``size``
    whose frames are stamped in ``time_base``: write ``Frame`` records, then ``close()``."""
    info = SourceInfo(width=size[0], height=size[1], rate=rate, time_base=time_base, frame_count=None, live=False)
    return VideoSink(str(path), info, settings=EncoderSettings(crf=crf, preset=preset))


@dataclass(frozen=True)
class LandmarkTrack:
    """landmarks: (T, 68, 2) float32 xy pixels, NaN where no face was found; source: (T,) int8,
    LM_DETECTED / LM_TRACKED (predictor in the previous frame's box) / LM_NONE."""

    landmarks: np.ndarray
    source: np.ndarray


def track_landmarks(
    frames: Iterator[np.ndarray], detector: LandmarkDetector, *, detect_side: int
) -> LandmarkTrack:
    """Landmarks of one face through a clip (HxWx3 uint8 RGB frames, all the same size).

    The HOG detector runs on the frame scaled so its long side is ``detect_side``; among its
    boxes the one overlapping the previous box most is followed (the largest at the start or
    when none overlaps), and the previous box is reused when the detector finds nothing.
    """
    marks, source = [], []
    prev_box: np.ndarray | None = None
    for rgb in frames:
        h, w = rgb.shape[:2]
        scale = min(1.0, detect_side / max(h, w))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        boxes = [b / scale for b in detector.detect_boxes(small)]
        box, how = None, LM_DETECTED
        if boxes:
            box = boxes[0]
            if prev_box is not None:
                best = max(boxes, key=lambda b: box_iou(b, prev_box)[0, 0])
                if box_iou(best, prev_box)[0, 0] > 0.2:
                    box = best
        elif prev_box is not None:
            box, how = prev_box, LM_TRACKED
        if box is None:
            marks.append(np.full((68, 2), np.nan, np.float32))
            source.append(LM_NONE)
            continue
        marks.append(detector.detect_in_box(rgb, box))
        source.append(how)
        prev_box = box
    if not marks:
        raise ClipError("no frames")
    return LandmarkTrack(landmarks=np.stack(marks).astype(np.float32), source=np.array(source, np.int8))


def smooth_landmarks(landmarks: np.ndarray, weights: np.ndarray, *, sigma: float) -> np.ndarray:
    """Per-point temporal smoothing of (T, 68, 2) landmarks with per-frame ``weights`` (T,) >= 0.

    Each frame gets a local linear fit (Gaussian weights, ``sigma`` in frames, times ``weights``)
    to its neighbours, evaluated at that frame. Where the neighbourhood is symmetric this is a
    plain Gaussian average; unlike one, it does not drag the points towards the inside at the
    clip's ends or next to frames without landmarks (weight 0, any value), which it
    interpolates. Frames farther than the kernel from any weighted frame take the nearest
    smoothed frame. Centred, so no lag: this is for offline clips, not live video.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    wts = np.asarray(weights, dtype=np.float64)
    if lm.ndim != 3 or wts.shape != lm.shape[:1]:
        raise ValueError(f"expected (T, K, 2) landmarks and (T,) weights, got {lm.shape} and {wts.shape}")
    if not (wts > 0).any():
        raise ClipError("no frame has landmarks")
    lm = np.where(wts[:, None, None] > 0, lm, 0.0)
    t = len(lm)
    radius = int(np.ceil(3 * sigma)) if sigma > 0 else 0
    # Weighted sums over the window of d^0, d^1, d^2 (d: neighbour offset) and of x, d * x.
    s0, s1, s2 = np.zeros(t), np.zeros(t), np.zeros(t)
    m0, m1 = np.zeros_like(lm), np.zeros_like(lm)
    for d in range(-radius, radius + 1):
        k = np.exp(-0.5 * (d / sigma) ** 2) if radius else 1.0
        lo, hi = max(0, -d), min(t, t - d)  # output frames whose neighbour t + d exists
        if hi <= lo:
            continue
        w = k * wts[lo + d:hi + d]
        s0[lo:hi] += w
        s1[lo:hi] += w * d
        s2[lo:hi] += w * d * d
        m0[lo:hi] += w[:, None, None] * lm[lo + d:hi + d]
        m1[lo:hi] += (w * d)[:, None, None] * lm[lo + d:hi + d]
    ok = s0 > 1e-6
    det = s0 * s2 - s1 * s1
    # A line needs neighbours at two or more offsets; with one, the weighted mean is all there is.
    linear = ok & (det > 1e-6 * np.maximum(s0 * s2, 1e-12))
    out = np.empty_like(lm)
    out[ok] = m0[ok] / s0[ok, None, None]
    out[linear] = (s2[linear, None, None] * m0[linear] - s1[linear, None, None] * m1[linear]) / det[linear, None, None]
    if not ok.all():
        idx = np.flatnonzero(ok)
        nearest = idx[np.abs(np.arange(t)[:, None] - idx[None, :]).argmin(1)]
        out[~ok] = out[nearest[~ok]]
    return out.astype(np.float32)


def jitter(landmarks: np.ndarray) -> float:
    """Mean |second temporal difference| of (T, 68, 2) landmarks in pixels: ~0 for smooth
    motion, large for frame-to-frame shaking. NaN frames are ignored."""
    if len(landmarks) < 3:
        return float("nan")
    acc = np.linalg.norm(landmarks[2:] - 2 * landmarks[1:-1] + landmarks[:-2], axis=-1)
    return float(np.nanmean(acc))


@dataclass(frozen=True)
class MaskStyle:
    """A template name and the seed of the rng passed to every ``MaskSynthesizer.apply`` call,
    so colour, texture, brightness and blur are the same on every frame."""

    template: str
    seed: int


def pick_style(synth: MaskSynthesizer, name: str, seed: int) -> MaskStyle:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    template = synth.template_names[int(rng.integers(len(synth.template_names)))]
    return MaskStyle(template=template, seed=int(rng.integers(2**31)))


def draw_mask(synth: MaskSynthesizer, rgb: np.ndarray, landmarks: np.ndarray, style: MaskStyle):
    """``SynthResult`` for one frame, styled identically on every frame of a clip."""
    return synth.apply(rgb, landmarks, rng=np.random.default_rng(style.seed), template=style.template)


@dataclass(frozen=True)
class ClipMasks:
    """Ground truth of a masked clip for F faces over T frames of HxW pixels.

    masks: (F, T, H, W) bool, pixels covered by each face's mask; boxes: (F, T, 4) float32 xyxy
    whole-face boxes; face_ids: (F,) int; landmarks: (F, T, 68, 2) float32, the smoothed
    landmarks the masks were drawn from; source: (F, T) int8 (LM_*); templates: (F,) str;
    pts: (T,) int64 in time_base.
    """

    masks: np.ndarray
    boxes: np.ndarray
    face_ids: np.ndarray
    landmarks: np.ndarray
    source: np.ndarray
    templates: tuple[str, ...]
    pts: np.ndarray
    time_base: Fraction

    def region(self, t: int) -> np.ndarray:
        """(H, W) bool, union of all faces' masks in frame t."""
        return self.masks[:, t].any(0)

    def gt_boxes(self, t: int) -> list[tuple[int, np.ndarray]]:
        return [(int(i), self.boxes[f, t]) for f, i in enumerate(self.face_ids)]


def save_clip_masks(path: Path, masks: ClipMasks) -> None:
    """npz with ``masks`` packed along W with np.packbits ((F, T, H, ceil(W/8)) uint8) and
    ``mask_shape`` (F, T, H, W), plus the other ``ClipMasks`` fields as arrays."""
    np.savez_compressed(
        path,
        masks=np.packbits(masks.masks, axis=-1),
        mask_shape=np.array(masks.masks.shape, np.int64),
        boxes=masks.boxes.astype(np.float32),
        face_ids=masks.face_ids.astype(np.int64),
        landmarks=masks.landmarks.astype(np.float32),
        source=masks.source.astype(np.int8),
        templates=np.array(masks.templates, dtype=str),
        pts=masks.pts.astype(np.int64),
        time_base=np.array([masks.time_base.numerator, masks.time_base.denominator], np.int64),
    )


def load_clip_masks(path: Path) -> ClipMasks:
    with np.load(path, allow_pickle=False) as data:
        shape = tuple(int(v) for v in data["mask_shape"])
        masks = np.unpackbits(data["masks"], axis=-1, count=shape[-1]).astype(bool)
        num, den = (int(v) for v in data["time_base"])
        return ClipMasks(
            masks=masks.reshape(shape), boxes=data["boxes"], face_ids=data["face_ids"],
            landmarks=data["landmarks"], source=data["source"],
            templates=tuple(str(s) for s in data["templates"]), pts=data["pts"], time_base=Fraction(num, den),
        )


@dataclass(frozen=True)
class ClipSummary:
    name: str
    frames: int
    size: tuple[int, int]
    rate: Fraction
    templates: tuple[str, ...]
    detected: float
    raw_jitter: float
    smooth_jitter: float


@dataclass(frozen=True)
class _Face:
    """One face to draw in a clip: frames come from ``video`` resized to ``size``."""

    video: VideoInfo
    size: tuple[int, int]
    landmarks: np.ndarray
    source: np.ndarray
    style: MaskStyle


def _render(
    faces: Sequence[_Face], *, synth: MaskSynthesizer, out_dir: Path, name: str, config: ClipConfig,
    strip: bool,
) -> ClipMasks:
    """Draw each face's mask on its own tile (tiles side by side, in order) and write the masked
    video, the ground-truth video and the masks npz."""
    ref = faces[0].video
    frames = min(len(f.landmarks) for f in faces)
    width = sum(f.size[0] for f in faces)
    height = faces[0].size[1]
    offsets = np.cumsum([0] + [f.size[0] for f in faces[:-1]])
    masks = np.zeros((len(faces), frames, height, width), bool)
    boxes = np.zeros((len(faces), frames, 4), np.float32)
    pts_out = np.zeros(frames, np.int64)
    strip_frames: list[np.ndarray] = []
    strip_start = max(0, frames // 2 - 4)
    streams = [iter_frames(f.video.path, size=f.size, max_frames=frames, skip=config.skip_frames) for f in faces]
    writer_args = dict(size=(width, height), rate=ref.rate, time_base=ref.time_base, preset=config.preset)
    masked_out = clip_writer(out_dir / f"{name}_masked.mp4", crf=config.masked_crf, **writer_args)
    gt_out = clip_writer(out_dir / f"{name}_gt.mp4", crf=config.gt_crf, **writer_args)
    with masked_out, gt_out:
        for t in tqdm(range(frames), desc=f"{name} render", unit="frame", leave=False):
            tiles = [next(s) for s in streams]
            pts = tiles[0][1]
            gt_tiles, masked_tiles = [], []
            for f, (face, (rgb, _)) in enumerate(zip(faces, tiles)):
                res = draw_mask(synth, rgb, face.landmarks[t], face.style)
                x0 = offsets[f]
                masks[f, t, :, x0:x0 + face.size[0]] = res.mask
                boxes[f, t] = res.face_box + np.array([x0, 0, x0, 0], np.float32)
                gt_tiles.append(rgb)
                masked_tiles.append(res.image)
            gt = np.concatenate(gt_tiles, 1)
            masked = np.concatenate(masked_tiles, 1)
            masked_out.write(Frame(index=t, image=masked, pts=pts, time_base=ref.time_base))
            gt_out.write(Frame(index=t, image=gt, pts=pts, time_base=ref.time_base))
            pts_out[t] = pts
            if strip and strip_start <= t < strip_start + 8:
                strip_frames.append(masked)
    if strip and strip_frames:
        write_strip(out_dir / f"{name}_strip.png", strip_frames, boxes[:, strip_start:strip_start + len(strip_frames)])
    return ClipMasks(
        masks=masks, boxes=boxes, face_ids=np.arange(len(faces)),
        landmarks=np.stack([f.landmarks[:frames] for f in faces]),
        source=np.stack([f.source[:frames] for f in faces]),
        templates=tuple(f.style.template for f in faces), pts=pts_out, time_base=ref.time_base,
    )


def write_strip(path: Path, frames: Sequence[np.ndarray], boxes: np.ndarray) -> None:
    """Consecutive frames cropped to one fixed box around the faces (so jitter shows against the
    background), side by side, as a PNG."""
    h, w = frames[0].shape[:2]
    x0, y0 = np.floor(boxes[..., :2].reshape(-1, 2).min(0)).astype(int)
    x1, y1 = np.ceil(boxes[..., 2:].reshape(-1, 2).max(0)).astype(int)
    x0, y0, x1, y1 = max(x0 - 8, 0), max(y0 - 8, 0), min(x1 + 8, w), min(y1 + 8, h)
    crops = [f[y0:y1, x0:x1] for f in frames]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(crops, 1), cv2.COLOR_RGB2BGR))


def _landmarks_for(video: VideoInfo, size: tuple[int, int], detector: LandmarkDetector, config: ClipConfig):
    track = track_landmarks(
        (rgb for rgb, _ in tqdm(iter_frames(video.path, size=size, max_frames=config.max_frames,
                                            skip=config.skip_frames),
                                desc=f"{video.path.stem} landmarks", unit="frame", leave=False)),
        detector, detect_side=config.detect_side,
    )
    weights = np.select([track.source == LM_DETECTED, track.source == LM_TRACKED], [1.0, 0.25], 0.0)
    smooth = smooth_landmarks(track.landmarks, weights, sigma=config.smooth_sigma)
    return track, smooth


def make_clip(
    video: Path, *, detector: LandmarkDetector, synth: MaskSynthesizer, out_dir: Path, config: ClipConfig,
    strip: bool = False,
) -> tuple[ClipSummary, _Face]:
    """Masked clip, ground truth and masks for one unmasked video; returns a summary and the
    face (landmarks at the written size) for reuse in the multi-face clip."""
    info = probe(video)
    size = output_size(info.size, config.max_side)
    track, smooth = _landmarks_for(info, size, detector, config)
    face = _Face(video=info, size=size, landmarks=smooth, source=track.source,
                 style=pick_style(synth, video.stem, config.seed))
    masks = _render([face], synth=synth, out_dir=out_dir, name=video.stem, config=config, strip=strip)
    save_clip_masks(out_dir / f"{video.stem}_masks.npz", masks)
    summary = ClipSummary(
        name=video.stem, frames=len(masks.pts), size=size, rate=info.rate, templates=masks.templates,
        detected=float((track.source == LM_DETECTED).mean()),
        raw_jitter=jitter(track.landmarks), smooth_jitter=jitter(smooth),
    )
    return summary, face


def scale_landmarks(landmarks: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Landmarks (…, 2) xy pixels on a frame of size ``src`` (w, h) moved to the same frame
    resized to ``dst``, with pixel centres kept aligned."""
    s = np.array([dst[0] / src[0], dst[1] / src[1]], np.float32)
    return (landmarks + 0.5) * s - 0.5


def make_multi_clip(
    faces: Sequence[_Face], *, synth: MaskSynthesizer, out_dir: Path, config: ClipConfig, strip: bool = False,
) -> ClipSummary:
    """Two or more single-face clips of the same size and frame rate side by side, each tile
    scaled so the whole frame's long side fits ``config.max_side``; face id i is the i-th tile."""
    w, h = faces[0].size
    scale = min(1.0, config.max_side / (w * len(faces)), config.max_side / h)
    tile = (max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2))
    tiles = [
        _Face(video=f.video, size=tile, landmarks=scale_landmarks(f.landmarks, f.size, tile), source=f.source,
              style=pick_style(synth, f"{MULTI_NAME}{i}", config.seed))
        for i, f in enumerate(faces)
    ]
    masks = _render(tiles, synth=synth, out_dir=out_dir, name=MULTI_NAME, config=config, strip=strip)
    save_clip_masks(out_dir / f"{MULTI_NAME}_masks.npz", masks)
    return ClipSummary(
        name=MULTI_NAME, frames=len(masks.pts), size=(tile[0] * len(faces), tile[1]), rate=faces[0].video.rate,
        templates=masks.templates, detected=float((masks.source == LM_DETECTED).mean()),
        raw_jitter=float("nan"), smooth_jitter=float(np.mean([jitter(lm) for lm in masks.landmarks])),
    )


def pick_multi_pair(faces: dict[str, _Face], names: Sequence[str] | None) -> list[_Face] | None:
    """The faces named, or else the first two (by name) whose clips share size and frame rate."""
    if names:
        missing = [n for n in names if n not in faces]
        if missing:
            raise ClipError(f"--multi names clips that were not made: {missing}")
        return [faces[n] for n in names]
    keys = sorted(faces)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            fa, fb = faces[a], faces[b]
            if fa.size == fb.size and fa.video.rate == fb.video.rate:
                return [fa, fb]
    return None


def get_args_parser() -> argparse.ArgumentParser:
    d = ClipConfig()
    p = argparse.ArgumentParser(description="Synthetic masked clips with unmasked ground truth.")
    p.add_argument("--videos", type=Path, required=True, help="folder of unmasked clips")
    p.add_argument("--templates", type=Path, required=True, help="MaskTheFace folder with masks.cfg")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="frames per clip (0: all)")
    p.add_argument("--skip-frames", type=int, default=d.skip_frames,
                   help="source frames to leave out before each clip starts (a later, unseen part of the videos)")
    p.add_argument("--max-side", type=int, default=d.max_side)
    p.add_argument("--detect-side", type=int, default=d.detect_side)
    p.add_argument("--upsample", type=int, default=d.upsample)
    p.add_argument("--smooth-sigma", type=float, default=d.smooth_sigma, help="landmark smoothing, frames")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--multi", nargs="+", metavar="NAME",
                   help="clip names (file stems) for the side-by-side clip (default: two of equal size and fps)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these clips (file stems)")
    p.add_argument("--strips", action="store_true", help="also write <name>_strip.png, 8 consecutive frames")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = ClipConfig(
        max_frames=args.max_frames or None, skip_frames=args.skip_frames, max_side=args.max_side, detect_side=args.detect_side,
        upsample=args.upsample, smooth_sigma=args.smooth_sigma, seed=args.seed,
    )
    videos = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if args.videos.is_dir() else []
    if args.only:
        videos = [v for v in videos if v.stem in args.only]
    if not videos:
        logger.error("no videos in %s", args.videos)
        return 2
    try:
        detector = LandmarkDetector(upsample=config.upsample)
        textures = args.templates / "textures"
        # Frontal templates only: a side view would swap in mid-clip as the head turns.
        synth = MaskSynthesizer(templates_root=args.templates, textures_root=textures if textures.is_dir() else None)
    except (LandmarkModelNotFoundError, TemplateConfigError) as exc:
        logger.error("%s", exc)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summaries, faces = [], {}
    for video in videos:
        try:
            summary, face = make_clip(video, detector=detector, synth=synth, out_dir=args.out, config=config,
                                      strip=args.strips)
        except ClipError as exc:
            logger.warning("skipping %s: %s", video.name, exc)
            continue
        summaries.append(summary)
        faces[video.stem] = face
        logger.info("%s: %d frames %dx%d, template %s, detected %.0f%%, jitter %.2f -> %.2f px",
                    summary.name, summary.frames, *summary.size, summary.templates[0], 100 * summary.detected,
                    summary.raw_jitter, summary.smooth_jitter)
    try:
        pair = pick_multi_pair(faces, args.multi)
    except ClipError as exc:
        logger.error("%s", exc)
        return 2
    if pair is None:
        logger.warning("no two clips share size and frame rate; no multi-face clip")
    else:
        summaries.append(make_multi_clip(pair, synth=synth, out_dir=args.out, config=config, strip=args.strips))
        logger.info("%s: %s side by side, %d frames", MULTI_NAME, " + ".join(f.video.path.stem for f in pair),
                    summaries[-1].frames)
    print(f"{'clip':32s} {'frames':>6s} {'size':>9s} {'fps':>6s}  templates")
    for s in summaries:
        print(f"{s.name:32s} {s.frames:6d} {s.size[0]:4d}x{s.size[1]:<4d} {float(s.rate):6.2f}  {','.join(s.templates)}")
    return 0 if summaries else 1


if __name__ == "__main__":
    sys.exit(main())
