"""Track: stable face identities across frames (norfair), masks carried between detections."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from norfair import Detection, Tracker

from stream.geometry import extent_of
from stream.records import Detections, Track
from stream.smoothing import OneEuroFilter, TemporalConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerConfig:
    """norfair parameters, in frames.

    max_iou_distance: 1 - IoU above which a detection cannot continue a track.
    hit_counter_max: how long a track survives without matching detections.
    initialization_delay: further matched detections a new track needs before it is reported
        (0 for still images, where every detection must count at once) ...
    confident_score: ... unless its first detection is at least this confident, so a clearly
        seen face is unmasked from its first frame and a doubtful one waits for confirmation.
    mask_confirm: detections in a row that must see a worn mask on a face before its mask is
        reported: one false detection (a hand at the mouth for a frame) paints nothing. 1 for
        still images.
    mask_misses: detector runs in a row that may miss a face while its last mask is still carried;
        after more, the face is left as it is: a mask taken off must not stay painted over.
    mask_release: detections in a row that must see a filled face without its mask before it is
        let go (its last mask is carried meanwhile): the detector loses a see-through mask for a
        single frame now and then, and each lapse would otherwise cost that frame and the
        ``mask_confirm`` frames to take it back. Each frame of it is a frame more before a mask
        taken off shows the real face again.
    verify_memory, verify_threshold: with a mask verifier (``Detections.mask_probs``), each track
        keeps a running mean of the verifier's logit over its detections that see a mask, the
        newest weighted ``verify_memory``, starting undecided, and its mask is filled only while that mean is at least
        logit(``verify_threshold``). One frame's verdict is noisy (a see-through mask flickers
        either side of any threshold, a hand at the mouth fools it for a frame or two); their
        mean over about 1 / ``verify_memory`` detections is not. For still images: memory 1 and
        the verifier's own threshold, the single image decides.
    """

    max_iou_distance: float = 0.8
    hit_counter_max: int = 15
    initialization_delay: int = 1
    confident_score: float = 0.9
    mask_confirm: int = 2
    mask_misses: int = 1
    mask_release: int = 2
    verify_memory: float = 0.1
    verify_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mask_confirm < 1 or self.mask_misses < 0 or self.mask_release < 1:
            raise ValueError("mask_confirm and mask_release must be >= 1 and mask_misses >= 0")
        if not 0 < self.verify_memory <= 1 or not 0 < self.verify_threshold < 1:
            raise ValueError("verify_memory must be in (0, 1] and verify_threshold in (0, 1)")


@dataclass(frozen=True)
class _Observation:
    """What the last detection of a track saw: its box and mask, in frame pixels; ``confident``:
    whether the mask counts on its own or only keeps a mask already filled."""

    box: np.ndarray
    score: float
    mask: np.ndarray
    mask_prob: float | None
    confident: bool


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def warp_mask(mask: np.ndarray, src_box: np.ndarray, dst_box: np.ndarray) -> np.ndarray:
    """Move a (H, W) bool mask with its face: the affine map taking ``src_box`` onto ``dst_box``."""
    if np.allclose(src_box, dst_box):
        return mask
    sw, sh = max(src_box[2] - src_box[0], 1e-3), max(src_box[3] - src_box[1], 1e-3)
    sx, sy = (dst_box[2] - dst_box[0]) / sw, (dst_box[3] - dst_box[1]) / sh
    matrix = np.array(
        [[sx, 0, dst_box[0] - sx * src_box[0]], [0, sy, dst_box[1] - sy * src_box[1]]], np.float32
    )
    h, w = mask.shape
    extent = extent_of(mask)
    if extent is None:
        return mask
    # Only the mask's extent is warped (a full 1080p frame took 1.7 ms a mask): the pixels around
    # it land outside the mask's new extent. Nearest sampling picks the same pixels but at exact
    # half-pixel ties, which OpenCV's fixed-point steps may break the other way.
    x0, y0, x1, y1 = extent
    corners = matrix[:, :2] @ np.array([[x0, x1], [y0, y1]], np.float32) + matrix[:, 2:]
    dx0, dy0 = max(int(np.floor(corners[0].min())) - 2, 0), max(int(np.floor(corners[1].min())) - 2, 0)
    dx1, dy1 = min(int(np.ceil(corners[0].max())) + 2, w), min(int(np.ceil(corners[1].max())) + 2, h)
    moved = np.zeros_like(mask)
    if dx1 <= dx0 or dy1 <= dy0:
        return moved
    local = matrix.copy()
    local[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float32) - (dx0, dy0)
    moved[dy0:dy1, dx0:dx1] = cv2.warpAffine(mask[y0:y1, x0:x1].astype(np.uint8), local, (dx1 - dx0, dy1 - dy0),
                                             flags=cv2.INTER_NEAREST) > 0
    return moved


class FaceTracker:
    """Assigns ids to faces, predicts their boxes on frames the detector skips, and (with
    ``temporal.enabled``) smooths each box with a One Euro filter so face crops do not jitter.

    ``rate`` is the video frame rate (frames per second) the filters are tuned for.
    """

    def __init__(
        self, config: TrackerConfig = TrackerConfig(), *, temporal: TemporalConfig = TemporalConfig(), rate: float = 25.0
    ) -> None:
        self.config = config
        self.temporal = temporal
        self.rate = rate
        self._max_id = 0
        self._id_offset = 0
        self._start()

    def reset(self) -> None:
        """Forget every track (scene cut); later ids continue after the ones already given."""
        self._id_offset = self._max_id
        self._start()

    def _start(self) -> None:
        self._tracker = Tracker(
            distance_function="iou",
            distance_threshold=self.config.max_iou_distance,
            hit_counter_max=self.config.hit_counter_max,
            # Confirmation is decided here (see confident_score), so norfair reports every object.
            initialization_delay=0,
        )
        self._hits: dict[int, int] = {}
        self._mask_hits: dict[int, int] = {}
        self._misses: dict[int, int] = {}
        self._bare: dict[int, int] = {}
        self._worn: dict[int, _Observation] = {}
        self._evidence: dict[int, float] = {}
        self._filters: dict[int, OneEuroFilter] = {}

    def _smooth(self, track_id: int, box: np.ndarray) -> np.ndarray:
        if not self.temporal.enabled:
            return box
        f = self._filters.get(track_id)
        if f is None:
            f = self._filters[track_id] = OneEuroFilter(
                rate=self.rate, min_cutoff=self.temporal.min_cutoff, beta=self.temporal.beta,
                d_cutoff=self.temporal.d_cutoff,
            )
        return f(box)

    def _weigh(self, track_id: int, prob: float) -> None:
        # A new track starts undecided (at the threshold), so its first verdicts count at their
        # share, not in full: a hand mistaken for a mask on a face's first frame fades at once.
        before = self._evidence.get(track_id, _logit(self.config.verify_threshold))
        m = self.config.verify_memory
        self._evidence[track_id] = (1 - m) * before + m * _logit(prob)

    def _verified(self, track_id: int) -> bool:
        return self._evidence.get(track_id, -math.inf) >= _logit(self.config.verify_threshold)

    def update(self, detections: Detections | None, *, frame_hw: tuple[int, int], period: int = 1) -> list[Track]:
        """Advance one frame. ``detections`` is None on frames the detector skipped; ``period``
        is the number of frames since the previous detection."""
        if detections is None:
            objects = self._tracker.update()
            matched: set[int] = set()
        else:
            confident = detections.confident_masks()
            norfair_dets = [
                Detection(
                    points=detections.boxes[i].reshape(2, 2).astype(np.float64),
                    scores=np.full(2, detections.scores[i]),
                    data=_Observation(detections.boxes[i], float(detections.scores[i]), detections.masks[i],
                                      None if detections.mask_probs is None else float(detections.mask_probs[i]),
                                      bool(confident[i])),
                )
                for i in range(len(detections))
            ]
            objects = self._tracker.update(detections=norfair_dets, period=period)
            matched = {id(d) for d in norfair_dets}
        h, w = frame_hw
        tracks = []
        for obj in objects:
            if obj.id is None:
                continue
            track_id = obj.id + self._id_offset
            self._max_id = max(self._max_id, track_id)
            seen: _Observation = obj.last_detection.data
            fresh = id(obj.last_detection) in matched
            hits = self._hits[track_id] = self._hits.get(track_id, 0) + int(fresh)
            was_filled = track_id in self._worn
            sees_mask = seen.mask.any() and (seen.confident or was_filled)
            if fresh:
                self._misses[track_id] = 0
                if sees_mask:
                    self._mask_hits[track_id] = self._mask_hits.get(track_id, 0) + 1
                    self._bare[track_id] = 0
                else:
                    self._mask_hits[track_id] = 0
                    self._bare[track_id] = self._bare.get(track_id, 0) + 1
                if sees_mask and seen.mask_prob is not None:
                    self._weigh(track_id, seen.mask_prob)
            elif detections is not None:
                self._misses[track_id] = self._misses.get(track_id, 0) + 1
            confirmed = (self._mask_hits.get(track_id, 0) >= self.config.mask_confirm
                         or (was_filled and self._bare.get(track_id, 0) < self.config.mask_release))
            masked = (confirmed and self._misses.get(track_id, 0) <= self.config.mask_misses
                      and (seen.mask_prob is None or self._verified(track_id)))
            if masked and sees_mask:
                self._worn[track_id] = seen
            elif not masked:
                self._worn.pop(track_id, None)
            worn = self._worn.get(track_id)
            if hits <= self.config.initialization_delay and seen.score < self.config.confident_score:
                continue
            # A fresh detection is the best evidence; the Kalman estimate fills the gaps.
            raw = seen.box if fresh else obj.estimate.reshape(4)
            box = np.clip(self._smooth(track_id, raw), 0, [w, h, w, h]).astype(np.float32)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            if worn is None:
                mask = np.zeros((h, w), bool)
            else:
                # The mask where the face is as well as where the smoothed box puts it: the box filter
                # lags a moving face by a few pixels, which alone would uncover the mask's leading edge.
                mask = warp_mask(worn.mask, worn.box, raw) | warp_mask(worn.mask, worn.box, box)
            tracks.append(Track(track_id, box, seen.score, mask))
        alive = {obj.id + self._id_offset for obj in objects if obj.id is not None}
        self._filters = {k: v for k, v in self._filters.items() if k in alive}
        self._hits = {k: v for k, v in self._hits.items() if k in alive}
        self._mask_hits = {k: v for k, v in self._mask_hits.items() if k in alive}
        self._misses = {k: v for k, v in self._misses.items() if k in alive}
        self._bare = {k: v for k, v in self._bare.items() if k in alive}
        self._worn = {k: v for k, v in self._worn.items() if k in alive}
        self._evidence = {k: v for k, v in self._evidence.items() if k in alive}
        return sorted(tracks, key=lambda t: t.track_id)
