"""Track: stable face identities across frames (norfair), masks carried between detections."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from norfair import Detection, Tracker

from stream.records import Detections, Track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerConfig:
    """norfair parameters, in frames.

    max_iou_distance: 1 - IoU above which a detection cannot continue a track.
    hit_counter_max: how long a track survives without matching detections.
    initialization_delay: matched detections needed before a track is reported
        (0 for still images, where every detection must count at once).
    """

    max_iou_distance: float = 0.8
    hit_counter_max: int = 15
    initialization_delay: int = 1


@dataclass(frozen=True)
class _Observation:
    """What the last detection of a track saw: its box and mask, in frame pixels."""

    box: np.ndarray
    score: float
    mask: np.ndarray


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
    moved = cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST)
    return moved.astype(bool)


class FaceTracker:
    """Assigns ids to faces and predicts their boxes on frames the detector skips."""

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self._tracker = Tracker(
            distance_function="iou",
            distance_threshold=config.max_iou_distance,
            hit_counter_max=config.hit_counter_max,
            initialization_delay=config.initialization_delay,
        )

    def update(self, detections: Detections | None, *, frame_hw: tuple[int, int], period: int = 1) -> list[Track]:
        """Advance one frame. ``detections`` is None on frames the detector skipped; ``period``
        is the number of frames since the previous detection."""
        if detections is None:
            objects = self._tracker.update()
        else:
            norfair_dets = [
                Detection(
                    points=detections.boxes[i].reshape(2, 2).astype(np.float64),
                    scores=np.full(2, detections.scores[i]),
                    data=_Observation(detections.boxes[i], float(detections.scores[i]), detections.masks[i]),
                )
                for i in range(len(detections))
            ]
            objects = self._tracker.update(detections=norfair_dets, period=period)
        h, w = frame_hw
        tracks = []
        for obj in objects:
            if obj.id is None:
                continue
            seen: _Observation = obj.last_detection.data
            box = np.clip(obj.estimate.reshape(4), 0, [w, h, w, h]).astype(np.float32)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            tracks.append(Track(obj.id, box, seen.score, warp_mask(seen.mask, seen.box, box)))
        return sorted(tracks, key=lambda t: t.track_id)
