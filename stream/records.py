"""The typed records that flow through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, in source-frame pixels.

    boxes:  (N, 4) float32, xyxy pixels, the whole-face box.
    scores: (N,) float32, face confidence in [0, 1].
    masks:  (N, H, W) bool, full-frame segmentation of the mask the detector sees on each face
            (all False where it sees none).
    mask_probs: (N,) float32, the mask verifier's probability that each face wears a mask (0 where
            the detector sees none), or None when no verifier ran. The verifier does not erase
            masks here: whether one is filled is decided per track, over time (stream.track).
    mask_scores: (N,) float32, the confidence of the strongest face_mask on each face (0 where the
            detector sees none), or None when every mask in ``masks`` counts on its own.
    mask_score: the confidence a face_mask needs to count on its own; weaker ones are in ``masks``
            only to keep a face that is already being filled (``DetectorSettings.keep_score``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    mask_probs: np.ndarray | None = None
    mask_scores: np.ndarray | None = None
    mask_score: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if (self.boxes.shape != (n, 4) or self.scores.shape != (n,) or len(self.masks) != n
                or (self.mask_probs is not None and self.mask_probs.shape != (n,))
                or (self.mask_scores is not None and self.mask_scores.shape != (n,))):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"masks {self.masks.shape}, mask_probs {None if self.mask_probs is None else self.mask_probs.shape}, "
                f"mask_scores {None if self.mask_scores is None else self.mask_scores.shape}"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def confident_masks(self) -> np.ndarray:
        """(N,) bool: the faces on which the detector sees a mask confidently enough to count on
        its own (a new track's mask, a still photo)."""
        if self.mask_scores is None:
            return self.masks.any(axis=(1, 2))
        # A score is set exactly where a mask is: no need to scan the full-frame masks.
        return (self.mask_scores > 0) & (self.mask_scores >= self.mask_score)

    @classmethod
    def empty(cls, height: int, width: int) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            masks=np.zeros((0, height, width), bool),
        )


@dataclass(frozen=True)
class Track:
    """One tracked face in one frame, in source-frame pixels.

    box:  (4,) float32 xyxy pixels (smoothed when temporal smoothing is on).
    mask: (H, W) bool full-frame mask region to reconstruct (may be all False).
    """

    track_id: int
    box: np.ndarray
    score: float
    mask: np.ndarray


@dataclass
class Frame:
    """One frame and everything the stages learned about it.

    image:  (H, W, 3) uint8 RGB, the decoded frame; never modified in place.
    output: (H, W, 3) uint8 RGB, the frame to encode; set by the inpaint stage.
    filled: track ids of the faces the inpaint stage reconstructed (a track with a mask may be left
            as it is: the eye guard found its eyes under the "mask").
    scene_cut: the picture changed completely here; temporal state must not carry over.
    detected_index: index of the frame the ``detections`` were found on: this one, or an
            earlier one when the detector runs in the background (live sources).
    pts:    presentation timestamp in ``time_base`` units (None for still images).
    decoded_at: ``time.perf_counter()`` when the frame entered the pipeline (end-to-end latency).
    latency: seconds spent in each stage, keyed by stage name.
    """

    index: int
    image: np.ndarray
    pts: int | None = None
    time_base: Fraction | None = None
    file: str | None = None
    detections: Detections | None = None
    detected_index: int | None = None
    tracks: list[Track] = field(default_factory=list)
    output: np.ndarray | None = None
    filled: list[int] = field(default_factory=list)
    scene_cut: bool = False
    decoded_at: float | None = None
    latency: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.image.shape[0], self.image.shape[1]
