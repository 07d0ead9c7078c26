"""Inpaint: reconstruct each tracked face under its mask and blend the result into the frame."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines.models.generator import GeneratorConfig
from engines.runtime import DeviceStream, Engine
from stream.geometry import CropWindow
from stream.records import Track
from stream.reference import Guide, PartsLocator, References, side_by_side
from stream.smoothing import TemporalConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InpaintSettings:
    """feather: width of the soft seam between generated and original pixels, as a share of
    the crop side (so it looks the same at every generator resolution). The seam is centred on
    the hole's edge, so it lies mostly in the margin by which the hole is dilated past the mask:
    the real face next to the mask (an eye just above it) keeps its own pixels. A seam spread
    outwards from the hole blurred the eyes; one wholly inside it let the fabric show through
    where the detected mask is a little tight."""

    feather: float = 0.04
    # With a reference face (stream.reference): the generated band finer than this many crop
    # pixels is replaced by the reference's, at frame resolution. The generator resolves about
    # two crop pixels after its output blur; a wider band also takes the reference's mouth shape.
    detail_sigma: float = 2.0
    exemplar_gain: float = 1.0  # the detail band of a stranger's face (lower: lent more softly)
    # A face whose visible part did not change since the last frame (MotionSettings.still_change)
    # reuses that frame's reconstruction, every other frame at most: the generator cannot see the
    # mouth under the mask, and a still face shows mostly the previous reconstruction anyway.
    skip_still: bool = True
    # The same for a face that moved, where the visible face's motion was measured (point
    # tracking): that motion carries the last reconstruction as well as a new run would place it.
    skip_moving: bool = True


def _inside_mask(hole: np.ndarray, dilation: int, depth: int) -> np.ndarray:
    """(S, S) bool: the hole more than ``depth`` crop pixels inside the detected mask (the hole is
    the mask grown by ``dilation``)."""
    size = 2 * (dilation + depth) + 1
    return cv2.erode((hole >= 0.5).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))) > 0


class EyeGuard:
    """Keeps the fill off the eyes above a worn mask. The hole is the mask grown by a few crop
    pixels and a seam, so that a mask edge the detector drew a little tight does not show; a mask
    worn high then reaches into the lower eyelids (2026-12-06: on 47 % of the filled frames of the
    real masked clips an eye was altered). The face-parsing net finds the eyes on the input crop
    (they are visible above the mask), every ``every`` frames per face; their pixels, grown by
    ``grow``, are taken out of the hole and the seam, except deep inside the detected mask
    (``depth`` crop pixels past its grown edge), where an "eye" would be fabric.

    Where both eyes it finds lie deep inside the mask (``judge``), the detector has put the mask
    on the eyes, and the face is not filled on that frame.

    Between runs the eyes are reused in crop coordinates: the crop window follows the face box,
    so they move with the head. A face whose eyes the net does not find is filled as before: the
    net also finds "eyes" on fists, arms and clothes (the mesh-mask clip's briefs), so asking for a
    pair before filling a track took those frames only from 55 to 48 (2026-12-07, README)."""

    def __init__(self, locator: PartsLocator, *, every: int = 5, grow: int = 1, depth: int = 2,
                 covered: float = 0.3, min_eye: int = 10) -> None:
        if every < 1 or grow < 0 or depth < 0 or not 0 < covered <= 1 or min_eye < 1:
            raise ValueError(f"EyeGuard needs every >= 1, grow >= 0, depth >= 0, 0 < covered <= 1, min_eye >= 1 "
                             f"(got {every}, {grow}, {depth}, {covered}, {min_eye})")
        self.locator = locator
        self.every = every
        self.covered, self.min_eye = covered, min_eye
        self._grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        self.depth = depth
        self._eyes: dict[int, tuple[int, np.ndarray]] = {}

    def reset(self) -> None:
        self._eyes.clear()

    def forget(self, live: set[int]) -> None:
        self._eyes = {k: v for k, v in self._eyes.items() if k in live}

    def eyes(self, track_id: int, crop: np.ndarray, call: int, *, fresh: bool = False) -> np.ndarray:
        """(S, S) bool: the eyes of one face's input crop ((S, S, 3) uint8 RGB), grown; looked for
        again when ``fresh``."""
        seen = self._eyes.get(track_id)
        if fresh or seen is None or call - seen[0] >= self.every or seen[1].shape != crop.shape[:2]:
            found = self.locator.eyes(crop[None])[0]
            seen = (call, cv2.dilate(found.astype(np.uint8), self._grow) > 0)
            self._eyes[track_id] = seen
        return seen[1]

    def judge(self, track_id: int, crop: np.ndarray, call: int, hole: np.ndarray,
              dilation: int) -> tuple[np.ndarray, bool]:
        """(the eyes, as ``eyes``; whether the detected mask lies on them). The detector then placed
        the face box too high (the mesh-mask clip, 2026-12-07: the box on forehead and eyes, the
        "mask" on the eyes), and a face drawn there would paint a nose and mouth over them. Eyes found
        on an earlier frame may have slid into the mask as the crop moved with the head (a synthetic
        clip, 2026-12-07: a frame of unfilled mask flashed), so a verdict on them is checked on a
        fresh look at this crop."""
        eyes = self.eyes(track_id, crop, call)
        if not self._pair_inside(eyes, hole, dilation):
            return eyes, False
        if self._eyes[track_id][0] != call:
            eyes = self.eyes(track_id, crop, call, fresh=True)
        return eyes, self._pair_inside(eyes, hole, dilation)

    def _pair_inside(self, eyes: np.ndarray, hole: np.ndarray, dilation: int) -> bool:
        """A pair of eyes (two areas side by side, at the same height, each of at least ``min_eye``
        pixels) with at least ``covered`` of each deep inside the mask. One "eye" alone deep inside
        a mask is more likely its fabric."""
        count, labels, stats, centres = cv2.connectedComponentsWithStats(eyes.astype(np.uint8), connectivity=8)
        deep = self._deep(hole, dilation)
        inside = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= self.min_eye
                  and (deep & (labels == i)).sum() >= self.covered * stats[i, cv2.CC_STAT_AREA]]
        side = eyes.shape[0]
        return any(side_by_side(centres[a], centres[b], side) for k, a in enumerate(inside) for b in inside[k + 1:])

    def keep(self, eyes: np.ndarray, hole: np.ndarray, dilation: int) -> np.ndarray:
        """(S, S) float32 in [0, 1]: how much of each pixel's own value to keep (1 on the eyes,
        with a one-pixel soft edge); the eyes deep inside the mask are not kept."""
        kept = (eyes & ~self._deep(hole, dilation)).astype(np.float32)
        if not kept.any():
            return kept
        return np.maximum(kept, cv2.GaussianBlur(kept, (0, 0), 1.0))

    def _deep(self, hole: np.ndarray, dilation: int) -> np.ndarray:
        return _inside_mask(hole, dilation, self.depth)


class HandGuard:
    """Keeps a hand in front of the mask out of the hole. The detector draws the mask with the
    fingers that cover it (real masks are labelled so), and the fill then paints a face over them
    (2026-12-07, webcam clip frames 150-200: both hands vanish).

    Hands are told from the mask by colour, and only on a mask the track has seen bare: colour
    alone cannot tell a beige or brown cloth mask from skin. Per crop, the mask's colour is the
    median chroma (YCrCb) of the hole pixels more than ``far`` from the visible face's skin, and a
    hole pixel looks like skin when its chroma lies at least ``along`` of the way from the mask's
    colour to the skin's (1: as far as the face's skin, or past it: fingers are often more
    saturated than a face) and within ``near`` of that line, within ``max_turn`` degrees of the
    skin's hue and at most ``max_strength`` times as saturated (orange plastic, red print). The
    folds of a cupped white mask take on some of the hands' hue in their reflected light; an
    ``along`` of 0.8 kept them.

    A track is armed once ``arm_after`` of its crops in a row had at most ``bare_share`` of their
    mask (the hole ``depth`` crop pixels inside the detected mask's edge) looking like skin; before
    that nothing is kept, so a mask in a skin tone (the share is high from its first frame) and
    photos (one look) are filled as before. Armed, the skin-like
    areas are kept whole where at least ``min_area`` of the crop of them lies ``depth`` crop pixels
    inside the detected mask (the skin at the hole's rim, in the margin the hole is grown by, is
    filled as before), unless more than ``max_share`` of the mask looks like skin, and only once
    they have been found on ``persist`` crops in a row: a hand stays a while, skin seen for a frame
    through a see-through mesh does not (2026-12-07, mesh clip: single frames kept a pale patch).
    The kept edge is soft on the inside, so no fabric shows beside a finger.

    Nothing is kept where colour cannot tell: a mask within ``far`` of skin on all but ``min_mask``
    of its pixels, or visible skin with no distinct hue (chroma within ``min_hue`` of grey: a face
    under coloured stage light, a grey photo, a fringe over the forehead; across UTKFace's groups
    the skin's chroma is about 30 units from grey, and under 14 are mostly grey or tinted photos)."""

    def __init__(self, *, near: float = 9.0, far: float = 12.0, along: float = 1.0, min_mask: float = 0.1,
                 min_hue: float = 14.0, max_turn: float = 25.0, max_strength: float = 1.8, max_share: float = 0.9,
                 arm_after: int = 8, bare_share: float = 0.02, persist: int = 3, depth: int = 6,
                 min_area: float = 0.004) -> None:
        if not (0 < near <= far and along > 0 and 0 <= min_mask <= 1 and min_hue >= 0 and 0 < max_turn <= 90
                and max_strength >= 1 and 0 < max_share <= 1 and arm_after >= 1 and 0 <= bare_share < max_share
                and persist >= 1 and depth >= 0 and min_area >= 0):
            raise ValueError("HandGuard needs 0 < near <= far, along > 0, 0 <= min_mask <= 1, min_hue >= 0, "
                             "0 < max_turn <= 90, max_strength >= 1, 0 <= bare_share < max_share <= 1, "
                             "arm_after >= 1, persist >= 1, depth >= 0, min_area >= 0")
        self.near, self.far, self.along, self.min_mask, self.min_hue = near, far, along, min_mask, min_hue
        self.max_turn, self.max_strength, self.max_share = max_turn, max_strength, max_share
        self.arm_after, self.bare_share, self.persist = arm_after, bare_share, persist
        self.depth, self.min_area = depth, min_area
        self._bare: dict[int, int] = {}  # crops in a row with a bare mask, per track; arm_after: armed
        self._held: dict[int, int] = {}  # crops in a row with a hand found, per armed track

    def reset(self) -> None:
        self._bare.clear()
        self._held.clear()

    def forget(self, live: set[int]) -> None:
        self._bare = {k: v for k, v in self._bare.items() if k in live}
        self._held = {k: v for k, v in self._held.items() if k in live}

    def keep(self, track_id: int, crop: np.ndarray, hole: np.ndarray, skin_area: np.ndarray,
             dilation: int) -> np.ndarray:
        """(S, S) float32 in [0, 1]: how much of each pixel's own value to keep (1 on the hand).
        crop: (S, S, 3) uint8 RGB; hole: (S, S) float32; skin_area: (S, S) bool, the visible face
        the skin colour is taken from."""
        s = crop.shape[0]
        kept = np.zeros((s, s), np.float32)
        inside = hole >= 0.5
        skin = self._skin_in_hole(crop, inside, skin_area)
        if skin is None:
            return kept
        # Measured inside the detected mask: the margin the hole is grown by is mostly skin.
        deep = _inside_mask(hole, dilation, self.depth)
        if not deep.any():
            return kept
        share = float((skin & deep).sum()) / float(deep.sum())
        bare = self._bare.get(track_id, 0)
        if bare < self.arm_after:
            self._bare[track_id] = bare + 1 if share <= self.bare_share else 0
            return kept
        hand = self._hand(skin, deep, share)
        held = self._held.get(track_id, 0)
        self._held[track_id] = held + 1 if hand.any() else 0
        if hand.any() and held + 1 == self.persist:
            logger.info("track %d: a hand over its mask is kept out of the fill", track_id)
        elif not hand.any() and held >= self.persist:
            logger.info("track %d: the hand left its mask after %d frames", track_id, held)
        if held + 1 < self.persist or not hand.any():
            return kept
        kept[hand] = 1.0
        return np.minimum(kept, cv2.GaussianBlur(kept, (0, 0), 1.0))

    def _hand(self, skin: np.ndarray, deep: np.ndarray, share: float) -> np.ndarray:
        """(S, S) bool: the skin-like areas that reach deep into the mask."""
        if share > self.max_share:
            # Most of the mask looks like skin: the light changed, or hands cover nearly all of it.
            return np.zeros_like(skin)
        hand = cv2.morphologyEx(skin.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        count, labels = cv2.connectedComponents(hand, connectivity=8)
        depth_of = np.bincount(labels[deep], minlength=count)
        wanted = np.nonzero(depth_of >= self.min_area * skin.size)[0]
        return np.isin(labels, wanted[wanted > 0])

    def _skin_in_hole(self, crop: np.ndarray, inside: np.ndarray, skin_area: np.ndarray) -> np.ndarray | None:
        """(S, S) bool: the hole pixels that look like the face's skin and not like the mask;
        None where colour cannot tell."""
        ycc = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb).astype(np.float32)
        # Off the hole's rim (the margin may show mask fabric), and neither hair, brows nor eyes
        # (dark) nor highlights.
        rim = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        skin = skin_area & ~rim
        if skin.sum() < 50 or inside.sum() < 50:
            return None
        low, high = np.percentile(ycc[..., 0][skin], [30, 95])
        skin &= (ycc[..., 0] >= low) & (ycc[..., 0] <= high)
        chroma = ycc[..., 1:]
        skin_colour = np.median(chroma[skin], axis=0)
        skin_hue = skin_colour - 128.0
        skin_strength = float(np.linalg.norm(skin_hue))
        if skin_strength < self.min_hue:
            return None
        # Worked out on the hole's pixels alone: a third of the crop, and most of the guard's time.
        pixels = chroma[inside]
        fabric = np.linalg.norm(pixels - skin_colour, axis=-1) > self.far
        if fabric.sum() < self.min_mask * len(pixels):
            return None
        mask_colour = np.median(pixels[fabric], axis=0)
        axis = skin_colour - mask_colour
        offset = pixels - mask_colour
        along = offset @ axis / float(axis @ axis)
        across = np.abs(offset @ np.array([-axis[1], axis[0]])) / float(np.linalg.norm(axis))
        hue = pixels - 128.0
        strength = np.linalg.norm(hue, axis=-1)
        towards = hue @ skin_hue / skin_strength
        looks = np.zeros(inside.shape, bool)
        looks[inside] = ((along >= self.along) & (across < self.near)
                         & (towards >= np.cos(np.radians(self.max_turn)) * strength)
                         & (strength <= self.max_strength * skin_strength))
        return looks


@dataclass
class _FaceState:
    """What the previous frame left for one track, in that frame's crop coordinates (S x S).

    hole_avg: running average of the hole mask, float32 [0, 1].
    generated: the reconstruction that was shown, float32 RGB [0, 255].
    crop: the input crop, float32 RGB [0, 255], to tell how much the visible face changed.
    """

    window: CropWindow
    hole_avg: np.ndarray
    generated: np.ndarray
    crop: np.ndarray
    reused: bool = False  # the reconstruction was carried over, not generated, in that frame


@dataclass
class _FaceJob:
    """One face of the current frame on its way through the generator (S x S crop coordinates).

    crop: float32 RGB [0, 255]; hole: float32 {0, 1}, the pixels to generate; average: the mask
    running average to keep; previous: (reconstruction, input crop) of the previous frame carried
    to this crop, None without temporal state.
    """

    track_id: int
    window: CropWindow
    crop: np.ndarray
    hole: np.ndarray
    average: np.ndarray
    previous: tuple[np.ndarray, np.ndarray] | None = None
    keep: np.ndarray | None = None  # (S, S) float32, the share of the input kept (EyeGuard, HandGuard)
    eyes: np.ndarray | None = None  # (S, S) bool, the eyes EyeGuard found (None: not looked for)
    reuse: bool = False  # skip the generator: previous[0] is this frame's reconstruction


def _box_motion(previous: CropWindow, current: CropWindow, size: int) -> np.ndarray:
    """2x3 map from a pixel of the current crop to the same frame point in the previous crop."""
    scale = current.side / previous.side
    shift_x = (current.x1 - previous.x1) * size / previous.side
    shift_y = (current.y1 - previous.y1) * size / previous.side
    return np.array([[scale, 0, shift_x], [0, scale, shift_y]], np.float32)


def _warp(matrix: np.ndarray, size: int, *arrays: np.ndarray) -> list[np.ndarray]:
    """Resample arrays (S x S, previous crop) through ``matrix`` (current pixel -> previous pixel)."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return [cv2.warpAffine(a, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE) for a in arrays]


@dataclass(frozen=True)
class MotionSettings:
    """Limits on the face motion measured between consecutive crops.

    The box only says where the detector put the face; the visible upper face says how the
    face itself moved. Points are tracked there (Lucas-Kanade) and a similarity transform is
    fitted with RANSAC; it is trusted only with ``min_inliers`` points, a scale change within
    ``max_scale`` and a shift within ``max_shift`` (share of the crop side), else the box's
    motion is used alone.
    """

    max_points: int = 80
    min_inliers: int = 8
    max_scale: float = 0.08
    max_shift: float = 0.08
    ransac_px: float = 1.0
    # A face whose visible part differs from the previous crop (carried by the box's motion) by
    # less than this mean absolute grey level has not moved: the point tracking is skipped.
    still_change: float = 1.5


def face_motion(previous: np.ndarray, current: np.ndarray, visible: np.ndarray,
                 settings: MotionSettings) -> np.ndarray | None:
    """2x3 similarity from current-crop pixels to ``previous`` pixels, fitted on the ``visible``
    (S, S) uint8 area; None when it cannot be trusted. Crops are (S, S, 3) float32 RGB."""
    cur = cv2.cvtColor(current.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    prev = cv2.cvtColor(previous.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    points = cv2.goodFeaturesToTrack(cur, settings.max_points, 0.01, 3, mask=visible)
    if points is None or len(points) < settings.min_inliers:
        return None
    moved, status, _ = cv2.calcOpticalFlowPyrLK(cur, prev, points, None, winSize=(11, 11), maxLevel=2)
    ok = status.ravel() == 1
    if ok.sum() < settings.min_inliers:
        return None
    matrix, inliers = cv2.estimateAffinePartial2D(points[ok], moved[ok], method=cv2.RANSAC,
                                                  ransacReprojThreshold=settings.ransac_px)
    if matrix is None or int(inliers.sum()) < settings.min_inliers:
        return None
    size = current.shape[0]
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    centre = matrix[:, :2] @ np.array([size / 2, size / 2]) + matrix[:, 2] - size / 2
    if abs(scale - 1) > settings.max_scale or float(np.abs(centre).max()) > settings.max_shift * size:
        return None
    return matrix.astype(np.float32)


class _StepClock:
    """Seconds spent in named steps of one call (summed over the faces)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class FaceInpainter:
    """Crops every masked face, runs the generator on the batch, composites and pastes back.

    With ``temporal.enabled``, per track: the hole is a running average of the masks (a pixel
    leaves the hole gradually, never enters it late), and the reconstruction is blended with the
    previous one in proportion to how little the visible face changed. The previous state is
    carried to the new crop by the face's own motion (``face_motion``), not the box's alone, so the
    blended reconstruction stays attached to the face instead of lagging behind it.

    ``last_steps``: seconds per step of the last call (crop, motion, eyes, hands, reference, generator,
    blend, paste; only the steps that ran), for the benchmark's breakdown; ``last_filled``: the track
    ids it reconstructed.

    ``frames_on_device`` (default: when the generator runs on a GPU): the frame goes to the
    engine's device once, faces are cut and pasted there (``CropWindow.cut_tensor`` /
    ``paste_tensor``: the paste and the reference's detail band are worked out at frame
    resolution, the costly part at 1080p) and the frame comes back once; only the small crops
    visit the CPU, for the motion estimate and the references.

    ``no_reference_engine``: the same generator in its form without reference inputs (model
    ``generator_noref``); it runs every batch in which no face has a reference, where it gives the
    reference-conditioned engine's result for less work.
    """

    def __init__(
        self,
        engine: Engine,
        config: GeneratorConfig,
        *,
        settings: InpaintSettings = InpaintSettings(),
        temporal: TemporalConfig = TemporalConfig(),
        motion: MotionSettings = MotionSettings(),
        references: References | None = None,
        frames_on_device: bool | None = None,
        no_reference_engine: Engine | None = None,
        eye_guard: EyeGuard | None = None,
        hand_guard: HandGuard | None = None,
    ) -> None:
        self.engine = engine
        self.eye_guard = eye_guard
        self.hand_guard = hand_guard
        self.no_reference_engine = no_reference_engine
        self.frames_on_device = engine.device.type == "cuda" if frames_on_device is None else frames_on_device
        self.references = references
        self._calls = 0
        self.motion = motion
        self.config = config
        self.settings = settings
        self.temporal = temporal
        size = 2 * config.mask_dilation + 1
        self._dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)) if config.mask_dilation else None
        self._states: dict[int, _FaceState] = {}
        self._device = DeviceStream(engine.device)
        self.last_steps: dict[str, float] = {}
        self.last_filled: list[int] = []

    def reset(self) -> None:
        """Drop all temporal state (scene cut)."""
        self._states.clear()
        if self.references is not None:
            self.references.reset()
        if self.eye_guard is not None:
            self.eye_guard.reset()
        if self.hand_guard is not None:
            self.hand_guard.reset()

    def prepare(self, image: np.ndarray, track: Track, *,
                frame: torch.Tensor | None = None) -> tuple[CropWindow, np.ndarray, np.ndarray]:
        """(window, crop (S, S, 3) uint8 RGB, hole (S, S) float32 {0, 1}) at generator size S;
        the crop is cut from ``frame`` ((3, H, W) float, on the device) when given."""
        s = self.config.size
        window = CropWindow.for_face(track.box, self.config.crop_scale)
        if frame is None:
            crop = window.cut(image, s)
        else:
            with self._device.active():
                cut = window.cut_tensor(frame, s).add_(0.5).clamp_(0, 255).to(torch.uint8)
            self._device.wait()
            crop = cut.permute(1, 2, 0).cpu().numpy()
        hole = window.cut(track.mask.astype(np.uint8), s, interpolation=cv2.INTER_NEAREST)
        if self._dilate is not None:
            hole = cv2.dilate(hole, self._dilate)
        return window, crop, hole.astype(np.float32)

    def _motion(self, state: _FaceState, window: CropWindow, crop: np.ndarray, box: np.ndarray,
                hole: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """(current crop pixel -> previous crop pixel: the box's motion, refined by how the
        visible face moved where that can be measured; whether the visible face stood still;
        whether that map was measured on the face, by the still test or by point tracking)."""
        size = self.config.size
        by_box = _box_motion(state.window, window, size)
        (previous_crop,) = _warp(by_box, size, state.crop)
        k = size / window.side
        visible = np.zeros((size, size), np.uint8)
        x1, y1 = (box[:2] - (window.x1, window.y1)) * k
        x2, y2 = (box[2:] - (window.x1, window.y1)) * k
        visible[max(int(y1), 0):max(int(y2), 0), max(int(x1), 0):max(int(x2), 0)] = 255
        visible[hole >= 0.5] = 0
        seen = visible > 0
        if seen.any() and float(np.abs(previous_crop - crop)[seen].mean()) < self.motion.still_change:
            return by_box, True, True
        refine = face_motion(previous_crop, crop, visible, self.motion)
        if refine is None:
            return by_box, False, False
        return (np.vstack([by_box, (0, 0, 1)]) @ np.vstack([refine, (0, 0, 1)]))[:2].astype(np.float32), False, True

    def _steady_hole(self, previous: np.ndarray | None, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hole to fill, running average) from the previous average aligned to this crop; new
        mask pixels are always in the hole."""
        if previous is None:
            return hole, hole
        m = self.temporal.mask_momentum
        average = m * hole + (1 - m) * previous
        return np.maximum(hole, (average > 0.25).astype(np.float32)), average

    def _steady_output(self, previous: tuple[np.ndarray, np.ndarray] | None, crop: np.ndarray, hole: np.ndarray,
                       generated: np.ndarray) -> np.ndarray:
        if previous is None:
            return generated
        previous_generated, previous_crop = previous
        visible = hole < 0.5
        change = float(np.abs(crop - previous_crop)[visible].mean()) / 255.0 if visible.any() else 1.0
        m = self.temporal.output_momentum
        weight = m + (1 - m) * min(change / self.temporal.change_full, 1.0)
        return weight * generated + (1 - weight) * previous_generated

    def __call__(self, image: np.ndarray, tracks: list[Track]) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB. Returns a new frame with every masked face reconstructed."""
        self._calls += 1
        self.last_steps = {}
        self.last_filled = []
        todo = [t for t in tracks if t.mask.any()]
        if self.references is not None:
            self._remember(image, tracks)
        temporal = self.temporal.enabled
        live = {t.track_id for t in todo}
        if temporal:
            self._states = {k: v for k, v in self._states.items() if k in live}
        if self.eye_guard is not None:
            self.eye_guard.forget(live)
        if self.hand_guard is not None:
            # A track that lost its mask for a frame (hands over all of it) stays armed.
            self.hand_guard.forget({t.track_id for t in tracks})
        if not todo:
            return image
        steps = _StepClock()
        frame = None
        if self.frames_on_device:
            with steps("crop"), self._device.active():
                frame = self._device.upload(torch.from_numpy(image)).permute(2, 0, 1).float()
        jobs = []
        for track in todo:
            with steps("crop"):
                window, crop, hole = self.prepare(image, track, frame=frame)
                job = _FaceJob(track.track_id, window, crop.astype(np.float32), hole, hole)
            state = self._states.get(track.track_id) if temporal else None
            if state is not None:
                with steps("motion"):
                    motion, still, measured = self._motion(state, window, job.crop, track.box, hole)
                    previous_hole, previous_generated, previous_crop = _warp(
                        motion, self.config.size, state.hole_avg, state.generated, state.crop)
                    job.previous = (previous_generated, previous_crop)
                    job.hole, job.average = self._steady_hole(previous_hole, hole)
                    skip = self.settings.skip_still if still else self.settings.skip_moving and measured
                    job.reuse = skip and not state.reused
            if self.eye_guard is not None:
                with steps("eyes"):
                    eyes, covered = self.eye_guard.judge(track.track_id, crop, self._calls, job.hole,
                                                         self.config.mask_dilation)
                    if covered:
                        # The face is shown as it is; its next fill starts afresh.
                        logger.debug("track %d: the mask lies on the eyes, not filled", track.track_id)
                        self._states.pop(track.track_id, None)
                        continue
                    job.keep = self.eye_guard.keep(eyes, job.hole, self.config.mask_dilation)
                    job.eyes = eyes
                    # The generator sees the eyes as context, not as a part to draw.
                    job.hole = np.where(job.keep >= 0.5, 0.0, job.hole).astype(np.float32)
            if self.hand_guard is not None:
                with steps("hands"):
                    hands = self.hand_guard.keep(track.track_id, crop, job.hole, self._upper_face(job.hole),
                                                 self.config.mask_dilation)
                    if hands.any():
                        job.keep = hands if job.keep is None else np.maximum(job.keep, hands)
                        job.hole = np.where(hands >= 0.5, 0.0, job.hole).astype(np.float32)
            jobs.append(job)
        with steps("reference"):
            guides = [self._guide(job) for job in jobs]
        fresh = [i for i, job in enumerate(jobs) if not job.reuse]
        predicted = [job.previous[0] if job.reuse else None for job in jobs]
        if fresh:
            with steps("generator"):
                for i, generated in zip(fresh, self._generate([jobs[i] for i in fresh], [guides[i] for i in fresh])):
                    predicted[i] = generated
        out = image.copy() if frame is None else None
        for job, guide, generated in zip(jobs, guides, predicted):
            with steps("paste"):
                seam = self._seam(job.hole)
                if job.keep is not None:
                    seam *= 1.0 - job.keep
            if guide is not None and guide.reference.exemplar:
                with steps("reference"):
                    alpha = seam[..., None]
                    completed = (job.crop * (1 - alpha) + generated * alpha + 0.5).clip(0, 255).astype(np.uint8)
                    guide = self.references.fit_parts(job.track_id, guide, completed, seam)
            if temporal:
                with steps("blend"):
                    if not job.reuse:
                        generated = self._steady_output(job.previous, job.crop, job.hole, generated)
                    self._states[job.track_id] = _FaceState(job.window, job.average, generated, job.crop,
                                                            reused=job.reuse)
            with steps("paste"):
                lent, lent_map, lent_weight = (None, None, None) if guide is None else guide.lent()
                detail = {} if guide is None else {
                    "detail": lent, "detail_map": lent_map, "detail_weight": lent_weight,
                    "detail_sigma": self.settings.detail_sigma,
                    "detail_gain": self.settings.exemplar_gain if guide.reference.exemplar else 1.0}
                if frame is None:
                    job.window.paste(out, generated, seam, **detail)
                else:
                    self._paste_on_device(frame, job, generated, seam, detail)
        if frame is not None:
            with steps("paste"):
                with self._device.active():
                    rounded = frame.add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
                self._device.wait()
                out = rounded.cpu().numpy()
        self.last_steps = steps.seconds
        self.last_filled = [job.track_id for job in jobs]
        return out

    def _generate(self, jobs: list[_FaceJob], guides: list[Guide | None]) -> np.ndarray:
        """The generator's reconstruction of each job's crop: (N, S, S, 3) float32 RGB [0, 255]."""
        crops = torch.from_numpy(np.stack([j.crop for j in jobs])).permute(0, 3, 1, 2).div_(255.0)
        holes = torch.from_numpy(np.stack([j.hole for j in jobs]))[:, None]
        feeds = {"image": self._device.upload(crops.contiguous()), "mask": self._device.upload(holes.contiguous())}
        engine = self.engine
        if self.config.reference:
            if self.no_reference_engine is not None and all(not self._feeds_generator(g) for g in guides):
                engine = self.no_reference_engine
            else:
                feeds.update(self._reference_feeds(guides))
        predicted = engine.run(feeds, stream=self._device.stream)["output"]
        self._device.wait()
        return (predicted.clamp(0, 1) * 255.0).permute(0, 2, 3, 1).cpu().numpy()

    def _paste_on_device(self, frame: torch.Tensor, job: _FaceJob, generated: np.ndarray, seam: np.ndarray,
                         detail: dict) -> None:
        def up(array: np.ndarray) -> torch.Tensor:
            return self._device.upload(torch.from_numpy(np.ascontiguousarray(array, np.float32)))

        with self._device.active():
            if detail:
                weight = detail["detail_weight"]
                detail = dict(detail, detail=up(detail["detail"]).permute(2, 0, 1),
                              detail_weight=None if weight is None else up(weight))
            job.window.paste_tensor(frame, up(generated).permute(2, 0, 1), up(seam), **detail)

    def _guide(self, job: _FaceJob) -> Guide | None:
        if self.references is None:
            return None
        return self.references.guide(job.track_id, job.crop.astype(np.uint8), self._upper_face(job.hole), job.eyes)

    def _reference_feeds(self, guides: list[Guide | None]) -> dict[str, torch.Tensor]:
        """The reference-conditioned generator's extra inputs: each face's reference carried into
        its crop window at generator size (zeros, and a zero mask, for a face without one)."""
        s = self.config.size
        references = np.zeros((len(guides), s, s, 3), np.float32)
        valid = np.zeros((len(guides), 1, s, s), np.float32)
        for i, guide in enumerate(guides):
            if not self._feeds_generator(guide):
                continue
            references[i] = guide.in_window(s)
            valid[i] = 1.0
        tensor = torch.from_numpy(references).permute(0, 3, 1, 2).div_(255.0)
        return {"reference": self._device.upload(tensor.contiguous()),
                "reference_mask": self._device.upload(torch.from_numpy(valid))}

    @staticmethod
    def _feeds_generator(guide: Guide | None) -> bool:
        # An exemplar only lends its fine detail (``References.fit_parts``): as the generator's
        # reference it pulled the fill towards a stranger's mouth, 0.6 dB further from the truth.
        return guide is not None and not guide.reference.exemplar

    def _upper_face(self, hole: np.ndarray) -> np.ndarray:
        """(S, S) bool: the part of the crop window that holds the visible face above the mask."""
        s = self.config.size
        visible = np.zeros((s, s), bool)
        visible[int(0.12 * s):int(0.6 * s), int(0.15 * s):int(0.85 * s)] = True
        return visible & (hole < 0.5)

    def _remember(self, image: np.ndarray, tracks: list[Track]) -> None:
        """Unmasked faces go to the identity memory; references of tracks that ended are dropped."""
        memory = self.references.memory
        if memory is not None:
            for track in tracks:
                if not track.mask.any():
                    memory.observe(image, track.track_id, track.box, track.score, self._calls)
        self.references.forget({t.track_id for t in tracks})

    def _seam(self, hole: np.ndarray) -> np.ndarray:
        """Paste alpha (S, S) float32: a smooth ramp ``feather`` wide centred on the hole's edge."""
        width = max(self.settings.feather * self.config.size, 1.0)
        binary = (hole >= 0.5).astype(np.uint8)
        signed = cv2.distanceTransform(binary, cv2.DIST_L2, 5) - cv2.distanceTransform(1 - binary, cv2.DIST_L2, 5)
        t = np.clip(signed / width + 0.5, 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)
