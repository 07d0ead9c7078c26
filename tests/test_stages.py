"""Detect / track / inpaint stages and the temporal filters, on small synthetic inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from engines.models.generator import GeneratorConfig
from engines.runtime import Engine, TensorSpec
from stream.geometry import Letterbox
from stream.inpaint import CropWindow, FaceInpainter, InpaintSettings, MotionSettings, face_motion
from stream.stages import DetectSchedule, DetectStage
from stream.records import Detections, Frame, Track
from stream.sink import DetectionsSink
from stream.smoothing import OneEuroFilter, SceneCutDetector, TemporalConfig
from stream.track import FaceTracker, TrackerConfig, warp_mask


def _detections(boxes, h=120, w=160, score=0.9):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.zeros((len(boxes), h, w), bool)
    for m, b in zip(masks, boxes):
        x1, y1, x2, y2 = b.astype(int)
        m[(y1 + y2) // 2 : y2, x1:x2] = True  # lower half of the face
    return Detections(boxes=boxes, scores=np.full(len(boxes), score, np.float32), masks=masks)


def test_tracker_keeps_ids_through_motion_and_misses():
    tracker = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=False))
    ids = []
    for t in range(30):
        dets = None if t % 5 == 4 else _detections([[10 + t, 20, 50 + t, 70], [100, 20 - t * 0.3, 140, 70 - t * 0.3]])
        tracks = tracker.update(dets, frame_hw=(120, 160))
        ids.append(tuple(tr.track_id for tr in tracks))
    assert len(set(ids)) == 1 and len(ids[0]) == 2


def test_tracker_ids_stay_unique_after_scene_cut_reset():
    tracker = FaceTracker(TrackerConfig(initialization_delay=0))
    before = tracker.update(_detections([[10, 20, 50, 70]]), frame_hw=(120, 160))
    tracker.reset()
    after = tracker.update(_detections([[10, 20, 50, 70]]), frame_hw=(120, 160))
    assert before[0].track_id != after[0].track_id


def test_temporal_box_is_steadier_than_raw():
    rng = np.random.default_rng(0)
    raw_tracker = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=False))
    smooth_tracker = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=True))
    raw, smooth = [], []
    for _ in range(60):
        box = np.array([40, 30, 100, 100], np.float32) + rng.normal(0, 2.0, 4).astype(np.float32)
        raw.append(raw_tracker.update(_detections([box]), frame_hw=(120, 160))[0].box)
        smooth.append(smooth_tracker.update(_detections([box]), frame_hw=(120, 160))[0].box)
    jitter = lambda boxes: float(np.abs(np.diff(np.stack(boxes), axis=0)).mean())  # noqa: E731
    assert jitter(smooth) < 0.5 * jitter(raw)


def test_one_euro_follows_fast_motion():
    f = OneEuroFilter(rate=25, min_cutoff=1.0, beta=0.02)
    out = [f(np.array([t * 20.0])) for t in range(40)]
    assert abs(float(out[-1][0]) - 39 * 20.0) < 40  # lags by less than two frames' motion


def test_scene_cut_detector():
    cut = SceneCutDetector(0.25)
    dark, bright = np.zeros((50, 50, 3), np.uint8), np.full((50, 50, 3), 200, np.uint8)
    assert [cut(dark), cut(dark + 5), cut(bright), cut(bright)] == [False, False, True, False]


def test_warp_mask_follows_box():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 20:40] = True
    moved = warp_mask(mask, np.array([20, 40, 40, 60.0]), np.array([50, 10, 90, 50.0]))
    ys, xs = np.nonzero(moved)
    got = np.array([xs.min(), xs.max(), ys.min(), ys.max()])
    assert np.abs(got - [50, 89, 10, 49]).max() <= 1  # nearest-neighbour rounding at the edges


def test_warp_mask_of_the_masks_extent_matches_a_whole_frame_warp():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(50, 300, 2)
        mask = np.zeros((h, w), bool)
        x0, y0 = rng.integers(-20, w), rng.integers(-20, h)
        mask[max(y0, 0):max(y0 + rng.integers(1, 80), 0), max(x0, 0):max(x0 + rng.integers(1, 80), 0)] = True
        mask &= rng.random((h, w)) > 0.2
        src = np.array([rng.uniform(0, w), rng.uniform(0, h), 0, 0], np.float32)
        src[2:] = src[:2] + rng.uniform(5, 100, 2)
        dst = src + rng.uniform(-30, 30, 4).astype(np.float32)
        dst[2:] = np.maximum(dst[2:], dst[:2] + 2)
        scale = (dst[2:] - dst[:2]) / (src[2:] - src[:2])
        matrix = np.array([[scale[0], 0, dst[0] - scale[0] * src[0]], [0, scale[1], dst[1] - scale[1] * src[1]]],
                          np.float32)
        whole = cv2.warpAffine(mask.astype(np.uint8), matrix, (int(w), int(h)), flags=cv2.INTER_NEAREST) > 0
        # The same pixels but at half-pixel ties, which OpenCV's fixed-point steps may break apart.
        assert (warp_mask(mask, src, dst) != whole).sum() <= max(0.02 * whole.sum(), 2)


def test_the_written_mask_covers_the_detected_mask_of_a_face_that_moves():
    # The smoothed box lags a face moving steadily up; a mask moved with it alone would leave the
    # detected mask's top edge (a worn mask's hem) outside the fill.
    tracker = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=True))
    lags = []
    for t in range(20):
        dets = _detections([[50, 60 - 2 * t, 110, 110 - 2 * t]])
        track = tracker.update(dets, frame_hw=(120, 160))[0]
        lags.append(float(track.box[1]) - (60 - 2 * t))
        if t >= 2:
            assert not (dets.masks[0] & ~track.mask).any()
    assert max(lags) > 2  # the box does lag: the test moves the face fast enough to show it


def test_letterbox_maps_back():
    box = Letterbox.fit((480, 640), (320, 320))
    assert (box.width, box.height, box.scale) == (320, 240, 0.5)
    out = box.apply(np.full((480, 640, 3), 255, np.uint8), (320, 320))
    assert out.shape == (320, 320, 3) and out[239, 319].all() and not out[240:].any()


class _MeanEngine(Engine):
    """Fills the hole with a constant colour: enough to check cropping and compositing."""

    backend = "test"
    device = torch.device("cpu")

    def __init__(self, value: float, size: int = 32) -> None:
        self.inputs = (TensorSpec("image", ("N", 3, size, size), "float32"),
                       TensorSpec("mask", ("N", 1, size, size), "float32"))
        self.outputs = (TensorSpec("output", ("N", 3, size, size), "float32"),)
        self.value = value
        self.calls = 0

    def _run(self, feeds, stream):
        self.calls += 1
        return {"output": torch.full_like(feeds["image"], self.value)}


def test_inpainter_changes_only_the_mask_region():
    image = np.full((120, 160, 3), 100, np.uint8)
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, np.zeros((120, 160), bool))
    track.mask[60:95, 50:90] = True
    config = GeneratorConfig(size=32, width=4, mask_dilation=1)
    inpainter = FaceInpainter(_MeanEngine(1.0), config, temporal=TemporalConfig(enabled=False))
    out = inpainter(image, [track])
    assert (out[70:85, 60:80] > 240).all()  # the hole is filled with the generated colour
    assert (out[:40] == 100).all() and (out[:, :30] == 100).all()  # far from the mask: untouched
    unmasked = Track(2, track.box, 0.9, np.zeros((120, 160), bool))
    assert inpainter(image, [unmasked]) is image


def test_seam_stays_inside_the_dilated_hole():
    """The real face next to the mask (eyes just above it) is never replaced: the blend fades
    out around the edge of the dilated hole, not far beyond it."""
    image = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    # 64 px crop of a 96 px window: 1.5 frame px per crop px, so the 2 px dilation is 3 frame px.
    config = GeneratorConfig(size=64, width=4, mask_dilation=2)
    out = FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False))(image, [track])
    margin = 6  # dilation, half the seam and the resampling, in frame pixels
    outside = np.ones((120, 160), bool)
    outside[60 - margin:95 + margin, 50 - margin:90 + margin] = False
    assert (out[outside] == 100).all()
    assert (out[62:93, 52:88] > 240).all()  # the mask itself is wholly generated


def test_temporal_inpainter_steadies_a_flickering_generator():
    image = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    config = GeneratorConfig(size=32, width=4, mask_dilation=1)
    engine = _MeanEngine(0.0)
    inpainter = FaceInpainter(engine, config, temporal=TemporalConfig(output_momentum=0.5))
    values = []
    for t in range(6):
        engine.value = float(t % 2)  # a generator that flips black/white every frame
        values.append(float(inpainter(image, [track])[75, 70].mean()))
    assert max(abs(a - b) for a, b in zip(values[2:], values[3:])) < 0.6 * 255


def testface_motion_measures_the_visible_face_shift():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (96, 96, 3)).astype(np.float32), (0, 0), 2.0)
    previous = texture[16:80, 16:80].copy()
    shift = np.float32([[1, 0, 1.5], [0, 1, -2.0]])  # the face moved right and up
    current = cv2.warpAffine(texture, shift, (96, 96), borderMode=cv2.BORDER_REFLECT)[16:80, 16:80]
    visible = np.zeros((64, 64), np.uint8)
    visible[4:36, 4:60] = 255  # upper face; the lower half is the mask
    matrix = face_motion(previous, current, visible, MotionSettings())
    assert matrix is not None
    np.testing.assert_allclose(matrix[:, :2], np.eye(2), atol=0.02)
    np.testing.assert_allclose(matrix[:, 2], [-1.5, 2.0], atol=0.25)  # current pixel -> previous pixel
    flat = np.full((64, 64, 3), 128, np.float32)
    assert face_motion(flat, flat, visible, MotionSettings()) is None  # nothing to track: box motion only


def test_point_tracking_is_skipped_while_the_face_is_still(monkeypatch):
    import stream.inpaint as inpaint

    calls = []
    monkeypatch.setattr(inpaint, "face_motion", lambda *a, **k: calls.append(1))
    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (140, 180, 3)).astype(np.float32), (0, 0), 2.0).astype(np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    inpainter = FaceInpainter(_MeanEngine(0.5), GeneratorConfig(size=32, width=4, mask_dilation=1))
    for _ in range(3):
        inpainter(scene[:120, :160], [track])
    assert calls == []  # the same face three times: no point tracking
    inpainter(scene[3:123, 2:162], [track])  # the face moved under a box that did not
    assert calls == [1]


def _skip_case(width: int) -> tuple[np.ndarray, Track, GeneratorConfig]:
    """A textured (120, width, 3) scene, a masked face track in its left 160 columns, a tiny generator config."""
    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (120, width, 3)).astype(np.float32), (0, 0), 2.0).astype(np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    return scene, track, GeneratorConfig(size=32, width=4, mask_dilation=1)


def test_a_still_face_skips_the_generator_every_other_frame():
    scene, track, config = _skip_case(160)
    outputs = {}
    for skip in (False, True):
        engine = _MeanEngine(0.5)
        inpainter = FaceInpainter(engine, config, settings=InpaintSettings(skip_still=skip, skip_moving=False))
        outputs[skip] = [inpainter(scene, [track]) for _ in range(4)]
        assert engine.calls == (2 if skip else 4)  # generated, reused, generated, reused
    assert np.abs(outputs[True][1].astype(int) - outputs[True][0]).max() <= 1  # the reused frame is the last one
    moved = FaceInpainter(engine := _MeanEngine(0.5), config, settings=InpaintSettings(skip_still=True, skip_moving=False))
    moved(scene, [track])
    moved(np.roll(scene, 3, axis=1), [track])  # the face moved: it is generated again
    assert engine.calls == 2


def test_a_moving_face_skips_the_generator_every_other_frame_only_where_its_motion_is_measured():
    scene, track, config = _skip_case(200)
    pans = [scene[:, 3 * t:3 * t + 160] for t in range(5)]  # the face moves 3 px a frame under a fixed box
    for skip in (False, True):
        engine = _MeanEngine(0.5)
        inpainter = FaceInpainter(engine, config, settings=InpaintSettings(skip_moving=skip))
        for frame in pans:
            inpainter(frame, [track])
        assert engine.calls == (3 if skip else 5)  # generated, carried, generated, carried, generated
    flat = np.full((120, 160, 3), 90, np.uint8)  # nothing to track: the motion is not measured
    engine = _MeanEngine(0.5)
    inpainter = FaceInpainter(engine, config, settings=InpaintSettings(skip_moving=True))
    for t in range(4):
        inpainter(flat + np.uint8(10 * t), [track])
    assert engine.calls == 4


def test_crop_window_pads_outside_the_frame():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    window = CropWindow(x1=-5, y1=-5, side=10)
    cut = window.cut(image, 10)
    assert cut.shape == (10, 10) and cut[5, 5] == image[0, 0] and cut[0, 0] == image[0, 0]


def test_auto_schedule_backs_off_when_still_and_detects_on_motion():
    class Fixed:
        def __init__(self):
            self.box = np.array([[40, 20, 100, 100]], np.float32)
            self.calls = []

        def __call__(self, image):
            self.calls.append(True)
            return _detections(self.box)

    det = Fixed()
    stage = DetectStage(det, schedule=DetectSchedule(auto=True, max_every=4))
    image = np.zeros((120, 160, 3), np.uint8)
    for i in range(40):
        stage.process(Frame(index=i, image=image))
    still_calls = len(det.calls)
    assert still_calls <= 16
    det.calls.clear()
    for i in range(40, 60):
        det.box = det.box + np.array([[8, 0, 8, 0]], np.float32)  # fast sideways motion
        stage.process(Frame(index=i, image=image))
    assert len(det.calls) >= 15


class _HeldDetector:
    """A detector that answers only when released; records which pictures it was given."""

    def __init__(self, box=(40, 20, 100, 100), fail: bool = False):
        self.box = np.array([box], np.float32)
        self.release = __import__("threading").Event()
        self.seen: list[int] = []
        self.fail = fail

    def __call__(self, image):
        self.seen.append(int(image[0, 0, 0]))
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("detector failed")
        return _detections(self.box)


def _numbered(i: int) -> Frame:
    image = np.zeros((120, 160, 3), np.uint8)
    image[0, 0, 0] = i
    return Frame(index=i, image=image)


def _settle(stage: DetectStage) -> None:
    """Wait until the detection in flight has finished (without taking it)."""
    stage._pending[1].exception(timeout=10)


def test_background_detection_lets_frames_pass_and_hands_over_stale_results():
    det = _HeldDetector()
    stage = DetectStage(det, background=True)
    try:
        frames = [_numbered(i) for i in range(4)]
        for f in frames:  # the detector is busy with frame 0: nobody waits for it
            stage.process(f)
        assert all(f.detections is None for f in frames) and det.seen == [0]
        det.release.set()
        _settle(stage)
        late = _numbered(4)
        stage.process(late)
        assert late.detections is not None and late.detected_index == 0
        assert len(late.detections) == 1
        _settle(stage)  # frame 4 went to the detector as soon as it was free
        assert det.seen == [0, 4]
    finally:
        stage.close()


def test_background_detection_drops_a_result_from_before_a_scene_cut():
    det = _HeldDetector()
    stage = DetectStage(det, background=True)
    try:
        stage.process(_numbered(0))
        cut = _numbered(1)
        cut.scene_cut = True
        stage.process(cut)
        det.release.set()
        _settle(stage)
        after = _numbered(2)
        stage.process(after)
        assert after.detected_index == 1  # the new scene's detection, never frame 0's
    finally:
        stage.close()


def test_background_detector_error_reaches_the_stage_thread():
    det = _HeldDetector(fail=True)
    stage = DetectStage(det, background=True)
    try:
        stage.process(_numbered(0))
        det.release.set()
        _settle(stage)
        with pytest.raises(RuntimeError, match="detector failed"):
            stage.process(_numbered(1))
    finally:
        stage.close()


def test_detections_jsonl_round_trips_rle(tmp_path):
    mask = np.zeros((40, 60), bool)
    mask[10:30, 5:25] = True
    frame = Frame(index=3, image=np.zeros((40, 60, 3), np.uint8), pts=6, time_base=__import__("fractions").Fraction(1, 2))
    frame.tracks = [Track(7, np.array([1, 2, 30, 35], np.float32), 0.91, mask),
                    Track(8, np.array([31, 2, 59, 35], np.float32), 0.5, mask)]
    frame.filled = [7]
    sink = DetectionsSink(tmp_path / "d.jsonl")
    sink.write(frame)
    sink.close()
    record = json.loads((tmp_path / "d.jsonl").read_text())
    assert record["frame"] == 3 and record["pts"] == 3.0 and record["file"] is None
    face = record["faces"][0]
    assert face["track_id"] == 7 and face["box"] == [1, 2, 30, 35] and face["score"] == pytest.approx(0.91)
    assert face["filled"] and not record["faces"][1]["filled"]
    rle = {"size": face["mask_rle"]["size"], "counts": face["mask_rle"]["counts"].encode()}
    assert (mask_utils.decode(rle).astype(bool) == mask).all()


def test_preview_overlays_outline_mask_and_box():
    from stream.sink import draw_overlays

    frame = Frame(index=0, image=np.zeros((60, 60, 3), np.uint8))
    mask = np.zeros((60, 60), bool)
    mask[30:40, 15:35] = True
    frame.tracks = [Track(3, np.array([10, 10, 50, 50], np.float32), 0.9, mask)]
    image = frame.image.copy()
    draw_overlays(image, frame)
    assert tuple(image[30, 20]) == (255, 0, 255)  # mask outline
    assert tuple(image[50, 30]) == (0, 255, 0)  # box edge
    assert not image[35, 25].any()  # inside the mask stays as it was


class _FixedDetectorEngine(Engine):
    """Returns given raw detector outputs (input pixels of a 64x64 letterboxed frame)."""

    backend = "test"
    device = torch.device("cpu")
    inputs = (TensorSpec("image", (1, 3, 64, 64), "float32"),)
    outputs = ()

    def __init__(self, boxes, labels, scores, masks):
        self.result = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                       "scores": torch.tensor(scores), "masks": torch.from_numpy(masks)}

    def _run(self, feeds, stream):
        return self.result


def test_detector_pairs_masks_with_faces_and_drops_nested_face_boxes():
    from engines.models.detector import DetectorConfig
    from stream.detect import FaceDetector

    masks = np.zeros((4, 1, 64, 64), np.float32)
    masks[2, 0, 20:30, 12:28] = 0.9  # the worn mask of the first face
    engine = _FixedDetectorEngine(
        boxes=[[10, 5, 30, 35], [12, 18, 28, 32], [12, 20, 28, 30], [40, 5, 60, 35]],
        labels=[1, 1, 2, 1],  # face, face box on the mask itself, face_mask, second face
        scores=[0.95, 0.7, 0.9, 0.9],
        masks=masks,
    )
    detector = FaceDetector(engine, DetectorConfig(input_size=(64, 64)))
    found = detector(np.zeros((128, 128, 3), np.uint8))  # letterbox scale 0.5
    assert len(found) == 2
    np.testing.assert_allclose(found.boxes[0], [20, 10, 60, 70])
    assert found.masks[0].sum() > 0.8 * (20 * 32) and not found.masks[1].any()
    assert found.masks[0][50, 40] and not found.masks[0][10, 40]


def test_tracks_start_at_once_when_confident_and_after_confirmation_otherwise():
    tracker = FaceTracker(TrackerConfig(initialization_delay=1, confident_score=0.9))
    assert len(tracker.update(_detections([[10, 20, 50, 70]], score=0.95), frame_hw=(120, 160))) == 1
    doubtful = FaceTracker(TrackerConfig(initialization_delay=1, confident_score=0.9))
    assert doubtful.update(_detections([[10, 20, 50, 70]], score=0.6), frame_hw=(120, 160)) == []
    assert doubtful.update(None, frame_hw=(120, 160)) == []  # a skipped frame confirms nothing
    assert len(doubtful.update(_detections([[11, 20, 51, 70]], score=0.6), frame_hw=(120, 160))) == 1


def _box_mask(y1, y2, x1=45, x2=95, hw=(160, 160)):
    m = np.zeros(hw, bool)
    m[y1:y2, x1:x2] = True
    return m


def test_a_mask_counts_only_on_the_lower_face_with_the_eyes_free():
    from stream.detect import DetectorSettings, worn_on_face

    box = np.array([40, 20, 100, 100], np.float32)  # 60 wide, 80 tall
    settings = DetectorSettings()
    assert worn_on_face(_box_mask(60, 98), box, settings)  # nose to chin
    assert not worn_on_face(_box_mask(22, 60), box, settings)  # over the eyes
    assert not worn_on_face(_box_mask(25, 98), box, settings)  # the whole face
    assert not worn_on_face(_box_mask(90, 150), box, settings)  # mostly below the face: a chest, a hand
    assert not worn_on_face(_box_mask(82, 100), box, settings)  # only the chin: a beard, a hand, a mask pulled down
    assert worn_on_face(_box_mask(82, 100), box, replace(settings, mask_top=1.0))


def test_detector_drops_a_face_mask_over_the_upper_face():
    from engines.models.detector import DetectorConfig
    from stream.detect import FaceDetector

    masks = np.zeros((3, 1, 64, 64), np.float32)
    masks[1, 0, 6:18, 11:29] = 0.9  # eyes and forehead of the first face
    masks[2, 0, 22:34, 41:59] = 0.9  # the lower face of the second
    engine = _FixedDetectorEngine(
        boxes=[[10, 5, 30, 35], [11, 6, 29, 18], [40, 5, 60, 35], [41, 22, 59, 34]],
        labels=[1, 2, 1, 2], scores=[0.95, 0.9, 0.95, 0.9],
        masks=np.concatenate([masks[:2], masks[2:], masks[2:]])[[0, 1, 0, 2]],
    )
    found = FaceDetector(engine, DetectorConfig(input_size=(64, 64)))(np.zeros((64, 64, 3), np.uint8))
    assert len(found) == 2
    assert not found.masks[0].any() and found.masks[1].any()


def test_detector_drops_the_mask_of_a_face_that_is_print():
    from engines.models.detector import DetectorConfig
    from stream.detect import DetectorSettings, FaceDetector

    masks = np.zeros((2, 1, 64, 64), np.float32)
    masks[1, 0, 22:34, 11:29] = 0.9  # a worn mask on the lower face
    engine = _FixedDetectorEngine(boxes=[[10, 5, 30, 35], [11, 22, 29, 34]], labels=[1, 2], scores=[0.95, 0.9],
                                  masks=masks)
    detector = FaceDetector(engine, DetectorConfig(input_size=(64, 64)))
    letter = np.full((64, 64, 3), 245, np.uint8)  # a black glyph on white paper, where the eyes would be
    letter[5:14, 10:20] = 10
    skin = np.full((64, 64, 3), (200, 150, 120), np.uint8)
    dark = np.full((64, 64, 3), 12, np.uint8)  # a dark scene: ink but no paper
    assert not detector(letter).masks.any()
    assert detector(skin).masks.any() and detector(dark).masks.any()
    # A gate at 1.0 is off.
    off = FaceDetector(engine, DetectorConfig(input_size=(64, 64)), settings=DetectorSettings(print_share=1.0))
    assert off(letter).masks.any()


def test_detector_reports_a_weak_mask_only_where_no_confident_one_is_seen():
    from engines.models.detector import DetectorConfig
    from stream.detect import FaceDetector

    masks = np.zeros((3, 1, 64, 64), np.float32)
    masks[1, 0, 20:34, 12:24] = 0.9  # the lower face, confidently
    masks[2, 0, 22:34, 20:30] = 0.9  # another, weaker sighting of it, further right

    def detect(labels, scores):
        engine = _FixedDetectorEngine(boxes=[[10, 5, 30, 35], [12, 20, 24, 34], [20, 22, 30, 34]],
                                      labels=labels, scores=scores, masks=masks)
        return FaceDetector(engine, DetectorConfig(input_size=(64, 64)))(np.zeros((64, 64, 3), np.uint8))

    both = detect([1, 2, 2], [0.95, 0.9, 0.35])
    assert both.confident_masks().tolist() == [True] and both.mask_scores[0] == pytest.approx(0.9)
    assert both.masks[0].sum() == masks[1, 0].astype(bool).sum()  # the weak one is not added to it
    weak = detect([1, 1, 2], [0.95, 0.2, 0.35])
    assert weak.masks[0].any() and weak.confident_masks().tolist() == [False]
    assert weak.mask_scores[0] == pytest.approx(0.35)



def test_a_less_certain_face_counts_only_with_a_worn_mask_on_it():
    from engines.models.detector import DetectorConfig
    from stream.detect import FaceDetector

    masks = np.zeros((3, 1, 64, 64), np.float32)
    masks[1, 0, 20:34, 12:28] = 0.9  # the first face's worn mask

    def detect(mask_score):
        engine = _FixedDetectorEngine(boxes=[[10, 5, 30, 35], [12, 20, 28, 34], [40, 5, 60, 35]],
                                      labels=[1, 2, 1], scores=[0.67, mask_score, 0.67], masks=masks)
        return FaceDetector(engine, DetectorConfig(input_size=(64, 64)))(np.zeros((64, 64, 3), np.uint8))

    found = detect(0.8)  # two faces at 0.67, under face_score 0.7: only the masked one stays
    assert len(found) == 1 and found.confident_masks().tolist() == [True]
    np.testing.assert_allclose(found.boxes[0], [10, 5, 30, 35])
    assert len(detect(0.2)) == 0  # no mask on either (0.2 is under keep_score): no face is sure enough


def test_a_photo_needs_a_surer_mask_than_a_video_frame():
    from engines.models.detector import DetectorConfig
    from stream.detect import DetectorSettings, FaceDetector

    masks = np.zeros((2, 1, 64, 64), np.float32)
    masks[1, 0, 20:34, 12:28] = 0.9
    engine = _FixedDetectorEngine(boxes=[[10, 5, 30, 35], [12, 20, 28, 34]], labels=[1, 2], scores=[0.9, 0.5],
                                  masks=masks)
    image = np.zeros((64, 64, 3), np.uint8)
    video = DetectorSettings()
    # A 0.5 mask starts a video's track (which the tracker confirms on the next detection) ...
    assert FaceDetector(engine, DetectorConfig(input_size=(64, 64)), settings=video)(image).confident_masks().tolist() == [True]
    # ... but one look at a photo must be surer.
    still = video.for_stills()
    assert still.mask_score == video.still_mask_score == 0.6 and still.keep_score == video.keep_score
    assert FaceDetector(engine, DetectorConfig(input_size=(64, 64)), settings=still)(image).confident_masks().tolist() == [False]
    # A stricter video setting is never loosened for photos.
    assert DetectorSettings(mask_score=0.7).for_stills().mask_score == 0.7

def _unmasked(boxes):
    dets = _detections(boxes)
    dets.masks[:] = False
    return dets


def test_a_mask_is_filled_only_once_seen_on_two_detections_in_a_row():
    box = [[40, 20, 100, 100]]
    tracker = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=False))
    first = tracker.update(_detections(box), frame_hw=(120, 160))
    assert len(first) == 1 and not first[0].mask.any()
    assert tracker.update(_detections(box), frame_hw=(120, 160))[0].mask.any()
    # One false sighting between clean detections paints nothing.
    once = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=False))
    for dets in (_unmasked(box), _detections(box), None, _unmasked(box), _detections(box), _unmasked(box)):
        assert not once.update(dets, frame_hw=(120, 160))[0].mask.any()


def test_a_mask_is_let_go_when_the_face_shows_without_it_or_goes_unseen():
    box = [[40, 20, 100, 100]]

    def confirmed():
        tracker = FaceTracker(TrackerConfig(initialization_delay=0), temporal=TemporalConfig(enabled=False))
        for _ in range(8):  # long enough for norfair to keep the track through misses
            tracker.update(_detections(box), frame_hw=(120, 160))
        return tracker

    taken_off = confirmed()
    for _ in range(TrackerConfig().mask_release - 1):
        assert taken_off.update(_unmasked(box), frame_hw=(120, 160))[0].mask.any()
    assert not taken_off.update(_unmasked(box), frame_hw=(120, 160))[0].mask.any()
    unseen = confirmed()
    empty = Detections.empty(120, 160)
    assert unseen.update(None, frame_hw=(120, 160))[0].mask.any()  # a skipped frame is no evidence
    assert unseen.update(empty, frame_hw=(120, 160))[0].mask.any()  # one missed detection is carried
    tracks = unseen.update(empty, frame_hw=(120, 160))
    assert len(tracks) == 1 and not tracks[0].mask.any()  # the face is still tracked, left as it is


def test_mask_release_carries_a_filled_mask_over_a_single_bare_detection():
    box = [[40, 20, 100, 100]]
    tracker = FaceTracker(TrackerConfig(initialization_delay=0, mask_release=2), temporal=TemporalConfig(enabled=False))
    for _ in range(3):
        worn = tracker.update(_detections(box), frame_hw=(120, 160))[0].mask
    # A see-through mask lost for one detection stays filled, with the mask last seen ...
    assert (tracker.update(_unmasked(box), frame_hw=(120, 160))[0].mask == worn).all()
    assert tracker.update(None, frame_hw=(120, 160))[0].mask.any()
    assert tracker.update(_detections(box), frame_hw=(120, 160))[0].mask.any()
    # ... a mask seen off on two detections in a row is let go, and a new mask waits for confirmation.
    assert tracker.update(_unmasked(box), frame_hw=(120, 160))[0].mask.any()
    assert not tracker.update(_unmasked(box), frame_hw=(120, 160))[0].mask.any()
    assert not tracker.update(_detections(box), frame_hw=(120, 160))[0].mask.any()
    # A face never filled is not held by it: the release only applies to a confirmed mask.
    fresh = FaceTracker(TrackerConfig(initialization_delay=0, mask_release=3), temporal=TemporalConfig(enabled=False))
    for dets in (_detections(box), _unmasked(box), _detections(box), _unmasked(box)):
        assert not fresh.update(dets, frame_hw=(120, 160))[0].mask.any()


def test_inpainter_shows_the_real_face_on_the_first_frame_without_a_mask():
    image = np.full((120, 160, 3), 100, np.uint8)
    box = np.array([40, 20, 100, 100], np.float32)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    inpainter = FaceInpainter(_MeanEngine(1.0), GeneratorConfig(size=32, width=4, mask_dilation=1),
                              temporal=TemporalConfig(mask_momentum=0.1))
    for _ in range(3):
        assert (inpainter(image, [Track(1, box, 0.9, mask)]) != image).any()
    assert inpainter(image, [Track(1, box, 0.9, np.zeros_like(mask))]) is image


def test_auto_schedule_detects_again_at_once_when_a_mask_appears():
    class Switching:
        def __init__(self):
            self.calls = []

        def __call__(self, image):
            self.calls.append(len(self.calls))
            box = [[40, 20, 100, 100]]
            return _detections(box) if len(self.calls) > 6 else _unmasked(box)

    det = Switching()
    stage = DetectStage(det, schedule=DetectSchedule(auto=True, max_every=4))
    image = np.zeros((120, 160, 3), np.uint8)
    detected = []
    for i in range(40):
        frame = Frame(index=i, image=image)
        stage.process(frame)
        if frame.detections is not None:
            detected.append((i, bool(frame.detections.masks.any())))
    first_masked = next(i for i, masked in detected if masked)
    assert (first_masked + 1, True) in detected  # the second sighting is on the next frame


class _SideVerifierEngine(Engine):
    """A verifier stand-in: says "masked" for faces in the left half of the frame only (it sees
    the crop's position through the crop's mean brightness, which the test paints)."""

    backend = "test"
    device = torch.device("cpu")

    def __init__(self, size: int = 32) -> None:
        self.inputs = (TensorSpec("image", ("N", 3, size, size), "float32"),)
        self.outputs = (TensorSpec("logit", ("N",), "float32"),)
        self.seen = 0

    def _run(self, feeds, stream):
        self.seen += feeds["image"].shape[0]
        return {"logit": (feeds["image"].mean(dim=(1, 2, 3)) - 0.5) * 20.0}


def test_verifier_vetoes_masks_on_faces_it_does_not_see_masked():
    from engines.models.detector import DetectorConfig
    from engines.models.verifier import VerifierConfig
    from stream.detect import CropVerifier, FaceDetector

    masks = np.zeros((4, 1, 64, 64), np.float32)
    masks[1, 0, 22:34, 11:29] = 0.9
    masks[3, 0, 22:34, 41:59] = 0.9
    engine = _FixedDetectorEngine(
        boxes=[[10, 5, 30, 35], [11, 22, 29, 34], [40, 5, 60, 35], [41, 22, 59, 34]],
        labels=[1, 2, 1, 2], scores=[0.95, 0.9, 0.95, 0.9], masks=masks,
    )
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 255  # the verifier stand-in says "masked" on bright crops
    verifier = _SideVerifierEngine()
    checked = FaceDetector(engine, DetectorConfig(input_size=(64, 64)),
                           verifier=CropVerifier(verifier, VerifierConfig(size=32, threshold=0.9)))
    found = checked(image)
    # The detector's masks stay; the verifier's verdicts ride along, and decide a single image.
    assert found.masks[0].any() and found.masks[1].any()
    assert found.mask_probs[0] > 0.99 and found.mask_probs[1] < 0.01
    assert checked.worn(found).tolist() == [True, False]
    assert verifier.seen == 2
    plain = FaceDetector(engine, DetectorConfig(input_size=(64, 64)))
    assert plain(image).mask_probs is None and plain.worn(plain(image)).tolist() == [True, True]


def test_face_verifier_drops_masked_faces_it_does_not_take_for_faces():
    from engines.models.detector import DetectorConfig
    from engines.models.verifier import VerifierConfig
    from stream.detect import CropVerifier, FaceDetector

    masks = np.zeros((5, 1, 64, 64), np.float32)
    masks[1, 0, 22:34, 11:29] = 0.9
    masks[3, 0, 22:34, 41:59] = 0.9
    engine = _FixedDetectorEngine(
        boxes=[[10, 5, 30, 35], [11, 22, 29, 34], [40, 5, 60, 35], [41, 22, 59, 34], [40, 40, 60, 62]],
        labels=[1, 2, 1, 2, 1], scores=[0.95, 0.9, 0.95, 0.9, 0.95], masks=masks,
    )
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 255  # the stand-in says "a face" on bright crops only
    checker = _SideVerifierEngine()
    found = FaceDetector(engine, DetectorConfig(input_size=(64, 64)),
                         face_verifier=CropVerifier(checker, VerifierConfig(size=32, threshold=0.5)))(image)
    # The dark masked "face" is dropped, box and mask; the dark face without a mask is not asked.
    assert found.boxes[:, 0].round().tolist() == [10, 40] and found.boxes[1, 1] == 40
    assert found.masks[0].any() and not found.masks[1].any()
    assert checker.seen == 2


def _verified(probs, config):
    """Frames on which a tracker fills the mask of one steady face whose verifier says ``probs``
    (None: no verifier ran)."""
    tracker = FaceTracker(config, temporal=TemporalConfig(enabled=False))
    box = np.array([[40, 20, 100, 100]], np.float32)
    out = []
    for p in probs:
        d = _detections(box)
        probs = None if p is None else np.array([p], np.float32)
        tracks = tracker.update(Detections(d.boxes, d.scores, d.masks, mask_probs=probs), frame_hw=(120, 160))
        out.append(bool(tracks and tracks[0].mask.any()))
    return out


def test_tracker_weighs_the_verifier_over_time():
    video = TrackerConfig(initialization_delay=0, mask_confirm=1)
    still = TrackerConfig(initialization_delay=0, mask_confirm=1, verify_memory=1.0, verify_threshold=0.95)
    # A see-through mask: the verifier swings around its threshold frame by frame.
    flicker = [0.97, 0.3] * 10
    assert sum(_verified(flicker, still)) == 10
    assert all(_verified(flicker, video))
    # A hand at the mouth fools it for two frames among many that it gets right.
    fooled = [0.02] * 5 + [0.99, 0.99] + [0.02] * 5
    assert _verified(fooled, still)[5:7] == [True, True]
    assert not any(_verified(fooled, video))
    # A new track with a clear mask is filled from its first frame.
    assert _verified([0.9, 0.9], video) == [True, True]
    # Without a verifier the detector alone decides.
    assert all(_verified([None] * 3, video))
    with pytest.raises(ValueError):
        TrackerConfig(verify_memory=0.0)


def test_inpainter_times_its_steps_and_the_report_lists_them():
    from stream.records import Frame
    from stream.report import RunStats

    image = np.full((120, 160, 3), 100, np.uint8)
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, np.zeros((120, 160), bool))
    track.mask[60:95, 50:90] = True
    # A still face would reuse its reconstruction on the second frame and skip the generator.
    inpainter = FaceInpainter(_MeanEngine(1.0), GeneratorConfig(size=32, width=4, mask_dilation=1),
                              settings=InpaintSettings(skip_still=False))
    inpainter(image, [track])
    assert {"crop", "generator", "paste"} <= set(inpainter.last_steps)
    inpainter(image, [track])  # the second frame of the track: carried by its motion and blended
    assert {"crop", "motion", "generator", "blend", "paste"} <= set(inpainter.last_steps)
    assert all(v >= 0 for v in inpainter.last_steps.values())
    inpainter(image, [])
    assert inpainter.last_steps == {}

    stats = RunStats(stage_names=["detect", "inpaint"])
    frame = Frame(index=0, pts=None, image=image)
    frame.latency = {"inpaint": 0.02, "inpaint.paste": 0.004, "inpaint.crop": 0.001, "detect": 0.03}
    stats.start()
    stats.count_written(frame)
    stats.finish(corrupt=0)
    assert stats.step_names == ["inpaint.crop", "inpaint.paste"]
    assert stats.summary()["latency_ms"]["inpaint.paste"]["p50"] == pytest.approx(4.0)


def _weak(boxes, score=0.35):
    dets = _detections(boxes)
    return replace(dets, mask_scores=np.full(len(dets), score, np.float32), mask_score=0.4)


def test_a_weak_mask_keeps_a_filled_face_but_starts_none():
    box = [[40, 20, 100, 100]]
    config = TrackerConfig(initialization_delay=0, mask_release=1)
    # Weak sightings alone never fill a face ...
    new = FaceTracker(config, temporal=TemporalConfig(enabled=False))
    for _ in range(4):
        assert not new.update(_weak(box), frame_hw=(120, 160))[0].mask.any()
    # ... but keep one that confident sightings filled, with the weak mask as seen.
    kept = FaceTracker(config, temporal=TemporalConfig(enabled=False))
    for _ in range(3):
        kept.update(_detections(box), frame_hw=(120, 160))
    for _ in range(4):
        assert kept.update(_weak(box), frame_hw=(120, 160))[0].mask.any()
    assert not kept.update(_unmasked(box), frame_hw=(120, 160))[0].mask.any()


def test_detector_reports_weak_masks_with_their_scores():
    from stream.detect import DetectorSettings, DetectorSettingsError

    with pytest.raises(DetectorSettingsError):
        DetectorSettings(keep_score=0.5, mask_score=0.4)
    weak = _weak([[40, 20, 100, 100]])
    assert weak.confident_masks().tolist() == [False]
    assert replace(weak, mask_scores=np.array([0.45], np.float32)).confident_masks().tolist() == [True]


class _DarkEyes:
    """Stands in for the parsing net: every pixel darker than 50 is an eye."""

    def __init__(self) -> None:
        self.calls = 0

    def eyes(self, crops):
        self.calls += 1
        return crops.max(axis=-1) < 50


def test_eye_guard_keeps_the_fill_off_the_eyes_above_the_mask():
    from stream.inpaint import EyeGuard

    image = np.full((120, 160, 3), 100, np.uint8)
    image[56:60, 55:65] = 30  # an eye right above the mask's top edge, inside its grown margin
    image[75:79, 60:70] = 30  # an "eye" deep inside the mask: fabric, to be filled
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    config = GeneratorConfig(size=64, width=4, mask_dilation=2)
    plain = FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False))(image, [track])
    assert (plain[56:60, 55:65] != 30).any()  # without the guard the grown hole takes the lower eyelid
    locator = _DarkEyes()
    guarded = FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False),
                            eye_guard=EyeGuard(locator, every=5))
    out = guarded(image, [track])
    assert (out[56:59, 56:65] == 30).all() and np.abs(out[56:60, 55:65].astype(int) - 30).max() <= 6
    assert (out[75:79, 60:70] > 240).all() and (out[64:93, 52:88] > 240).all() and (out[62:64, 70:88] > 240).all()
    for _ in range(4):
        guarded(image, [track])
    assert locator.calls == 1  # the eyes are looked for every 5 frames per face
    guarded(image, [track])
    assert locator.calls == 2


def test_eye_guard_leaves_a_face_unfilled_where_the_mask_lies_on_its_eyes():
    from stream.inpaint import EyeGuard

    image = np.full((120, 160, 3), 100, np.uint8)
    image[70:75, 56:64] = 30  # both eyes deep inside the detected mask: a face box placed too high
    image[70:75, 76:84] = 30
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    config = GeneratorConfig(size=64, width=4, mask_dilation=2)
    guarded = FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False),
                            eye_guard=EyeGuard(_DarkEyes(), every=1))
    assert np.array_equal(guarded(image, [track]), image) and guarded.last_filled == []
    image[70:75, 76:84] = 100  # one dark spot alone is taken for the mask's own pattern: filled
    assert (guarded(image, [track])[64:93, 52:88] > 240).all() and guarded.last_filled == [1]


def test_eye_guard_looks_again_before_leaving_a_face_unfilled():
    from stream.inpaint import EyeGuard

    image = np.full((120, 160, 3), 100, np.uint8)
    image[52:56, 56:64] = 30  # both eyes above the mask
    image[52:56, 76:84] = 30
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    config = GeneratorConfig(size=64, width=4, mask_dilation=2)
    locator = _DarkEyes()
    guarded = FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False),
                            eye_guard=EyeGuard(locator, every=5))
    guarded(image, [Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)])
    # The box drops by 15 px: the eyes found on the last frame now lie, in crop pixels, deep in the mask.
    out = guarded(image, [Track(1, np.array([40, 35, 100, 115], np.float32), 0.9, mask)])
    assert locator.calls == 2 and (out[64:93, 52:88] > 240).all()


def _masked_face(mask_colour, *, finger: bool):
    image = np.zeros((120, 160, 3), np.uint8)
    image[:] = (200, 150, 120)  # skin
    image[60:95, 50:90] = mask_colour
    if finger:
        image[68:110, 66:73] = (215, 160, 130)  # a finger from below, a little ruddier than the face
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True  # the detector's mask takes the finger in
    return image, Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)


def _guarded(arm_after=3):
    from stream.inpaint import HandGuard

    config = GeneratorConfig(size=64, width=4, mask_dilation=2)
    return FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False),
                         hand_guard=HandGuard(arm_after=arm_after))


def test_hand_guard_keeps_a_finger_in_front_of_a_mask_seen_bare():
    config = GeneratorConfig(size=64, width=4, mask_dilation=2)
    image, track = _masked_face((60, 90, 200), finger=True)
    plain = FaceInpainter(_MeanEngine(1.0, size=64), config, temporal=TemporalConfig(enabled=False))(image, [track])
    assert (plain[72:92, 68:71] > 240).all()  # without the guard the finger is painted over
    inpainter = _guarded(arm_after=3)
    assert (inpainter(image, [track])[72:92, 68:71] > 240).all()  # a hand from the first frame: not armed
    bare, _ = _masked_face((60, 90, 200), finger=False)
    for _ in range(3):
        inpainter(bare, [track])
    for _ in range(2):  # a hand is kept once it has stayed three frames
        assert (inpainter(image, [track])[72:92, 68:71] > 240).all()
    out = inpainter(image, [track])
    assert np.abs(out[72:92, 68:71].astype(int) - image[72:92, 68:71]).max() <= 3
    assert (out[64:92, 53:62] > 240).all() and (out[64:92, 77:87] > 240).all()  # the fabric is still filled
    inpainter.reset()  # a scene cut disarms it
    assert (inpainter(image, [track])[72:92, 68:71] > 240).all()


def test_hand_guard_never_arms_on_a_skin_coloured_mask():
    inpainter = _guarded(arm_after=3)
    image, track = _masked_face((215, 160, 130), finger=False)  # a mask in the finger's own colour
    for _ in range(6):
        out = inpainter(image, [track])
    assert (out[64:92, 53:87] > 240).all()


def test_hand_guard_checks_its_settings():
    from stream.inpaint import HandGuard

    with pytest.raises(ValueError):
        HandGuard(near=20.0, far=10.0)
    with pytest.raises(ValueError):
        HandGuard(arm_after=0)
    with pytest.raises(ValueError):
        HandGuard(persist=0)
