"""The concrete stages: detect, track and inpaint, each filling in its part of the frame record."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from stream.detect import FaceDetector
from stream.inpaint import FaceInpainter
from stream.pipeline import Stage
from stream.records import Detections, Frame
from stream.smoothing import SceneCutDetector
from stream.track import FaceTracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectSchedule:
    """When the detector runs; the tracker carries faces on the frames in between.

    every: run on every N-th frame (1: every frame).
    auto: adapt instead: detect on every frame while faces move fast or confidence is low,
        back off to every ``max_every`` frames while they are steady.
    fast_motion: centre shift per frame, as a share of the face size, that counts as fast.
    low_score: face confidence below which the next frame is detected again.
    """

    every: int = 1
    auto: bool = False
    max_every: int = 4
    fast_motion: float = 0.04
    low_score: float = 0.8

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_every < 1:
            raise ValueError("detection intervals must be >= 1")


def _centre_motion(previous: np.ndarray, current: np.ndarray) -> float:
    """Largest centre shift from a previous face to the nearest current one, relative to face size."""
    if len(previous) == 0 or len(current) == 0:
        return 0.0
    pc = (previous[:, :2] + previous[:, 2:]) / 2
    cc = (current[:, :2] + current[:, 2:]) / 2
    size = np.maximum(current[:, 2:] - current[:, :2], 1).max(axis=1)
    dist = np.linalg.norm(cc[:, None] - pc[None], axis=2).min(axis=1)
    return float((dist / size).max())


class DetectStage(Stage):
    """Runs the detector on the frames the schedule picks and on scene cuts.

    background: latency first (live sources). The detector runs in a worker thread of its own and
    the frames flow past it: a frame whose detection is still in flight goes on without one (the
    tracker carries the faces forward), and a finished detection is handed to the next frame
    that passes, ``Frame.detected_index`` telling which picture it came from. A slow detector
    then costs staleness of the boxes, not delay of the frames.
    """

    name = "detect"

    def __init__(self, detector: FaceDetector, *, schedule: DetectSchedule = DetectSchedule(),
                 scene_cuts: SceneCutDetector | None = None, background: bool = False) -> None:
        self.detector = detector
        self.schedule = schedule
        self.scene_cuts = scene_cuts
        self._last: int | None = None
        self._last_boxes = np.zeros((0, 4), np.float32)
        self._last_masked = 0
        self._interval = schedule.every
        self._worker = (
            ThreadPoolExecutor(1, thread_name_prefix="detector", initializer=torch.set_flush_denormal, initargs=(True,))
            if background else None
        )
        self._pending: tuple[int, Future] | None = None

    def process(self, frame: Frame) -> None:
        if self.scene_cuts is not None:
            frame.scene_cut = self.scene_cuts(frame.image)
        if self._worker is None:
            if self._due(frame):
                self._take(frame, self.detector(frame.image), frame.index)
            return
        if frame.scene_cut:
            # What is in flight saw the previous scene; the tracker has just forgotten it.
            self._pending = None
        elif self._pending is not None and self._pending[1].done():
            index, future = self._pending
            self._pending = None
            self._take(frame, future.result(), index)
        if self._pending is None and self._due(frame):
            self._pending = (frame.index, self._worker.submit(self.detector, frame.image))

    def _due(self, frame: Frame) -> bool:
        return self._last is None or frame.index - self._last >= self._interval or frame.scene_cut

    def _take(self, frame: Frame, detections: Detections, index: int) -> None:
        frame.detections = detections
        frame.detected_index = index
        if self.schedule.auto:
            elapsed = 1 if self._last is None else max(index - self._last, 1)
            moving = _centre_motion(self._last_boxes, detections.boxes) / elapsed > self.schedule.fast_motion
            # No face at all is the least certain state: a face walking in must be caught at once.
            unsure = len(detections) == 0 or float(detections.scores.min()) < self.schedule.low_score
            # A face or a mask that came or went is confirmed (or let go) on the next frame, not
            # several frames later: the tracker waits for a second sighting before painting.
            masked = int(detections.masks.any(axis=(1, 2)).sum())
            changed = len(detections) != len(self._last_boxes) or masked != self._last_masked
            self._interval = 1 if moving or unsure or changed else min(self._interval + 1, self.schedule.max_every)
            self._last_masked = masked
        self._last, self._last_boxes = index, detections.boxes

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)


class TrackStage(Stage):
    name = "track"

    def __init__(self, tracker: FaceTracker) -> None:
        self.tracker = tracker
        self._last_detection: int | None = None

    def process(self, frame: Frame) -> None:
        if frame.scene_cut:
            self.tracker.reset()
        period = 1
        if frame.detections is not None:
            if self._last_detection is not None:
                period = max(frame.index - self._last_detection, 1)
            self._last_detection = frame.index
        frame.tracks = self.tracker.update(frame.detections, frame_hw=frame.size, period=period)


class InpaintStage(Stage):
    name = "inpaint"

    def __init__(self, inpainter: FaceInpainter) -> None:
        self.inpainter = inpainter

    def process(self, frame: Frame) -> None:
        if frame.scene_cut:
            self.inpainter.reset()
        frame.output = self.inpainter(frame.image, frame.tracks)
        frame.filled = list(self.inpainter.last_filled)
        for step, seconds in self.inpainter.last_steps.items():
            frame.latency[f"{self.name}.{step}"] = seconds
