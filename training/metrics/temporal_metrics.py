"""Temporal-consistency metrics for video inpainting, in plain numpy.

Frames are HxWx3 uint8 RGB (0..255); regions are HxW bool; boxes are (4,) xyxy pixels.
Every metric has a streaming form (an accumulator fed one frame at a time) so long clips never
have to sit in memory; the array functions are thin wrappers around them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from stream.geometry import box_iou

Box = Sequence[float] | np.ndarray


def _check_pair(out: np.ndarray, gt: np.ndarray) -> None:
    if out.shape != gt.shape or out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected two HxWx3 frames of equal shape, got {out.shape} and {gt.shape}")


def _check_region(region: np.ndarray, frame: np.ndarray) -> np.ndarray:
    region = np.asarray(region, dtype=bool)
    if region.shape != frame.shape[:2]:
        raise ValueError(f"region {region.shape} does not match frame {frame.shape[:2]}")
    return region


class TemporalErrorAccumulator:
    """Streaming ``temporal_error``: call ``update`` for frames 0, 1, 2, ... in order.

    For each t >= 1 the frame error is the mean, over the pixels of region_t | region_{t-1} and
    the three channels, of |(out_t - out_{t-1}) - (gt_t - gt_{t-1})| in 0..255 units: how much
    the output's frame-to-frame change departs from the ground truth's. A temporally stable
    output with a constant colour offset scores 0; flicker scores its amplitude.
    """

    def __init__(self) -> None:
        self._prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.frame_errors: list[float] = []

    def update(self, out: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float | None:
        """Feed frame t; returns its error, or None for the first frame or an empty region."""
        _check_pair(out, gt)
        region = _check_region(region, out)
        # int16 holds differences of differences of uint8 values (-510..510).
        cur = (out.astype(np.int16), gt.astype(np.int16), region)
        prev, self._prev = self._prev, cur
        if prev is None:
            return None
        if prev[0].shape != cur[0].shape:
            raise ValueError(f"frame size changed from {prev[0].shape} to {cur[0].shape}")
        union = prev[2] | region
        if not union.any():
            return None
        if union.all():  # whole-frame scoring: skip the gather
            diff = (cur[0] - prev[0]) - (cur[1] - prev[1])
        else:
            diff = (cur[0][union] - prev[0][union]) - (cur[1][union] - prev[1][union])
        err = float(np.abs(diff).mean())
        self.frame_errors.append(err)
        return err

    @property
    def value(self) -> float:
        """Mean frame error over the frames scored so far; NaN when none was."""
        return float(np.mean(self.frame_errors)) if self.frame_errors else float("nan")


def temporal_error(out: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """Mean temporal error of ``out`` against ``gt`` inside ``region``.

    out, gt: (T, H, W, 3) uint8 RGB; region: (T, H, W) bool. Returns the mean over t >= 1 (with a
    non-empty region_t | region_{t-1}) of the per-frame error defined in
    ``TemporalErrorAccumulator``, in 0..255 units; NaN when no frame could be scored.
    """
    out, gt, region = np.asarray(out), np.asarray(gt), np.asarray(region, dtype=bool)
    if out.shape != gt.shape or region.shape != out.shape[:3]:
        raise ValueError(f"shapes differ: out {out.shape}, gt {gt.shape}, region {region.shape}")
    acc = TemporalErrorAccumulator()
    for t in range(len(out)):
        acc.update(out[t], gt[t], region[t])
    return acc.value


class StillReference:
    """Streaming temporal error of an output that never changes: it holds the first frame it is
    given, so each frame's error is the ground truth's own change inside the region. Feed the
    ground-truth frames in order.

    An output made without seeing under the mask cannot follow the part of that change the mask
    hides (the mouth while the person talks); on a clip where the head barely moves, that is most
    of it, so this value is about what any such output's temporal error comes to there.
    """

    def __init__(self) -> None:
        self._first: np.ndarray | None = None
        self._errors = TemporalErrorAccumulator()

    def update(self, gt: np.ndarray, region: np.ndarray) -> float | None:
        if self._first is None:
            self._first = gt
        return self._errors.update(self._first, gt, region)

    @property
    def value(self) -> float:
        return self._errors.value


def frame_psnr(out: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR in dB of one HxWx3 uint8 frame against its ground truth, over the whole frame or the
    pixels of ``region`` (HxW bool). inf when identical there, NaN for an empty region."""
    _check_pair(out, gt)
    o, g = out.astype(np.float64), gt.astype(np.float64)
    if region is not None:
        region = _check_region(region, out)
        if not region.any():
            return float("nan")
        o, g = o[region], g[region]
    mse = float(np.mean((o - g) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(255.0**2 / mse))


def psnr_per_frame(out: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """(T,) float64 PSNR in dB per frame of ``out`` against ``gt`` ((T, H, W, 3) uint8), over the
    whole frame or inside ``region`` ((T, H, W) bool); see ``frame_psnr`` for inf and NaN."""
    out, gt = np.asarray(out), np.asarray(gt)
    if out.shape != gt.shape or out.ndim != 4:
        raise ValueError(f"expected (T, H, W, 3) arrays of equal shape, got {out.shape} and {gt.shape}")
    if region is not None and np.shape(region) != out.shape[:3]:
        raise ValueError(f"region {np.shape(region)} does not match {out.shape[:3]}")
    return np.array(
        [frame_psnr(out[t], gt[t], None if region is None else region[t]) for t in range(len(out))],
        dtype=np.float64,
    )


class IdSwitchCounter:
    """Streaming CLEAR-MOT identity switches.

    Each frame, ground-truth objects are matched to tracks with IoU >= ``iou``: correspondences
    from the previous frame are kept while they still overlap enough, the rest are matched
    greedily by decreasing IoU (with a handful of faces per frame this agrees with the Hungarian
    matching of the CLEAR-MOT paper except in contrived ties). A switch is counted when a
    ground-truth object gets matched to a track id other than the one it was last matched to,
    even after frames where it was unmatched. ``gt_count``, ``track_count`` and
    ``matched_count`` count ground-truth objects, tracks and matches seen so far, so a tracker
    whose boxes never overlap the ground truth enough (no matches, hence no switches) can be
    told from a perfect one, and unmatched (duplicate or false) tracks show up.
    """

    def __init__(self, *, iou: float = 0.5) -> None:
        self.iou = float(iou)
        self.switches = 0
        self.gt_count = 0
        self.track_count = 0
        self.matched_count = 0
        self._last_track: dict[int, int] = {}
        self._current: dict[int, int] = {}

    def update(self, tracks: Iterable[tuple[int, Box]], gts: Iterable[tuple[int, Box]]) -> dict[int, int]:
        """Feed one frame's (track_id, box) and (gt_id, box) pairs; returns the gt -> track matching."""
        tracks = {int(i): b for i, b in tracks}
        gts = {int(i): b for i, b in gts}
        match: dict[int, int] = {}
        for g, t in self._current.items():
            if g in gts and t in tracks and box_iou(gts[g], tracks[t])[0, 0] >= self.iou:
                match[g] = t
        used = set(match.values())
        pairs = sorted(
            ((box_iou(gb, tb)[0, 0], g, t) for g, gb in gts.items() if g not in match
             for t, tb in tracks.items() if t not in used),
            key=lambda p: -p[0],
        )
        for iou, g, t in pairs:
            if iou < self.iou:
                break
            if g in match or t in used:
                continue
            match[g] = t
            used.add(t)
        for g, t in match.items():
            if g in self._last_track and self._last_track[g] != t:
                self.switches += 1
            self._last_track[g] = t
        self._current = match
        self.gt_count += len(gts)
        self.track_count += len(tracks)
        self.matched_count += len(match)
        return match


def id_switches(
    track_ids_per_frame: Sequence[Sequence[tuple[int, Box]]],
    gt_boxes_per_frame: Sequence[Sequence[tuple[int, Box]]],
    iou: float = 0.5,
) -> int:
    """Number of CLEAR-MOT identity switches (see ``IdSwitchCounter``) over a clip: per frame, a
    list of (track_id, xyxy box) from the tracker and of (gt_id, xyxy box) from the ground truth."""
    if len(track_ids_per_frame) != len(gt_boxes_per_frame):
        raise ValueError(f"{len(track_ids_per_frame)} tracked frames but {len(gt_boxes_per_frame)} gt frames")
    counter = IdSwitchCounter(iou=iou)
    for tracks, gts in zip(track_ids_per_frame, gt_boxes_per_frame):
        counter.update(tracks, gts)
    return counter.switches


def block_luma_difference(a: np.ndarray, b: np.ndarray, *, block: int = 16) -> np.ndarray:
    """Mean absolute luma (BT.601, 0..255) difference of two HxWx3 uint8 RGB frames in each
    ``block`` x ``block`` tile: (ceil(H / block), ceil(W / block)) float64; edge tiles are averaged
    over the pixels they hold."""
    _check_pair(a, b)
    weights = np.array([0.299, 0.587, 0.114])
    diff = np.abs(a.astype(np.float64) @ weights - b.astype(np.float64) @ weights)
    h, w = diff.shape
    rows, cols = np.arange(0, h, block), np.arange(0, w, block)
    sums = np.add.reduceat(np.add.reduceat(diff, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    return sums / counts


def visibly_altered(a: np.ndarray, b: np.ndarray, *, block: int = 16, threshold: float = 12.0) -> bool:
    """True when some tile's mean absolute luma difference exceeds ``threshold``: re-encoding a
    frame at the pipeline's default quality stays below about 9, a painted-over mouth far above."""
    return bool((block_luma_difference(a, b, block=block) > threshold).any())


def gradient_magnitude(frame: np.ndarray) -> np.ndarray:
    """(H, W) float32 magnitude of the luma gradient (central differences) of an HxWx3 uint8 RGB
    frame: how much detail each pixel carries."""
    grey = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    gy, gx = np.gradient(grey)
    return np.hypot(gx, gy)


def structural_sharpness(output: np.ndarray, truth: np.ndarray, region: np.ndarray, *, strength: float = 10.0,
                         margin: int = 8) -> float:
    """Mean gradient magnitude of ``output`` over that of ``truth`` inside ``region`` ((H, W) bool),
    both first cleaned by the same non-local means filter (``strength``: OpenCV's h for luma and
    colour). The plain ratio counts every gradient as detail: JPEG blocks or sensor grain lent from
    another photo raise it while the picture gets worse. What survives the filter is structure:
    lip lines, nostrils, a chin contour, and the true face's own such edges."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return float("nan")
    h, w = region.shape
    y1, y2 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)
    x1, x2 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)
    inside = region[y1:y2, x1:x2]
    out, ref = (gradient_magnitude(cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(im[y1:y2, x1:x2]), None,
                                                                   strength, strength, 7, 21))[inside].mean()
                for im in (output, truth))
    return float(out / ref) if ref > 0 else float("nan")
