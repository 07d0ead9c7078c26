"""Do no harm: the precision sets, their measures, and the hard-negative training scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.models.detector import FACE, FACE_MASK
from tests.media import make_video
from training.evaluation.evaluate_precision import (
    altered_outside_faces,
    clip_mask_rate,
    make_mask_off_clip,
    mask_off_clip,
    nonface_fills,
    photo_folder,
    unmasked_clips,
)
from training.data.negatives import load_nonfaces
from training.evaluation.evaluate_temporal import iter_rgb
from training.data.negatives import negative_files
from training.metrics.temporal_metrics import block_luma_difference, visibly_altered

REPO = Path(__file__).resolve().parents[1]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_negative_splits_are_fixed_and_hold_out_whole_people(tmp_path):
    for i in range(10):
        _touch(tmp_path / "photos" / "unmasked" / f"{i:04d}.jpg")
    for person in "ABCDEFGHIJ":
        for k in range(2):
            _touch(tmp_path / "faces" / "lfw" / person / f"{person}_{k:04d}.jpg")
    val = negative_files(tmp_path, "photos", "val")
    train = negative_files(tmp_path, "photos", "train")
    assert [p.name for p in val] == ["0000.jpg", "0005.jpg"] and len(train) == 8
    lfw_val = negative_files(tmp_path, "lfw", "val")
    lfw_train = negative_files(tmp_path, "lfw", "train")
    assert {p.parent.name for p in lfw_val} == {"A", "F"} and len(lfw_val) == 4
    assert not {p.parent.name for p in lfw_val} & {p.parent.name for p in lfw_train}
    with pytest.raises(ValueError):
        negative_files(tmp_path, "utkface", "val")


def test_visibly_altered_ignores_codec_noise_and_sees_a_painted_block():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    noisy = np.clip(frame.astype(int) + rng.integers(-6, 7, frame.shape), 0, 255).astype(np.uint8)
    assert not visibly_altered(frame, noisy)
    painted = frame.copy()
    painted[64:70, 80:90] = 255 - painted[64:70, 80:90]  # a corner tile of 6 x 10 pixels
    tiles = block_luma_difference(frame, painted)
    assert tiles.shape == (5, 6) and tiles[:4].max() == 0 and tiles[4, 5] > 12
    assert visibly_altered(frame, painted)


def test_mask_off_counts_frames_until_the_output_is_the_input_again():
    flags = [True] * 10 + [True, True, False, True, False, False, False]
    r = mask_off_clip(flags, 10)
    assert r.frames_until_back == 4 and r.filled_before == 1.0
    assert mask_off_clip([True, False, False, False], 2).frames_until_back == 0


def test_mask_off_clip_switches_at_the_middle(tmp_path):
    masked = make_video(tmp_path / "a_masked.mp4", frames=10, audio=False)
    gt = tmp_path / "a_gt.mp4"
    frames = list(iter_rgb(masked))
    import av

    with av.open(str(gt), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full_like(frames[0], 200), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    switch = make_mask_off_clip(masked, gt, tmp_path / "off.mp4")
    out = list(iter_rgb(tmp_path / "off.mp4"))
    assert switch == 5 and len(out) == 10
    assert abs(float(out[4].mean()) - float(frames[4].mean())) < 3 and abs(float(out[5].mean()) - 200) < 3


@pytest.mark.slow
def test_unmasked_clips_run_the_pipeline_and_compare_every_frame(tiny_weights, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    make_video(clips / "talk.mp4", frames=12)
    det, gen = tiny_weights
    result = unmasked_clips(clips, tmp_path, 10, ["--detector-weights", str(det), "--generator-weights", str(gen)])
    # Untrained weights find no face, so nothing may change.
    assert result["frames"] == 10 and result["altered_rate"] == 0.0 and result["clips"]["talk"]["frames"] == 10


class _TwoMaskedFaces:
    """A detect stage stand-in: a masked face at the left from frame 0, a second masked "face" at
    the right on frames 6-11."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image):
        from stream.records import Detections

        h, w = image.shape[:2]
        second = 6 <= self.calls < 12
        self.calls += 1
        boxes = [[4, 4, 36, 44]] + ([[56, 4, 88, 44]] if second else [])
        masks = np.zeros((len(boxes), h, w), bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            masks[k, 26:44, x1:x2] = True
        n = len(boxes)
        return Detections(np.array(boxes, np.float32), np.full(n, 0.95, np.float32), masks,
                          mask_scores=np.full(n, 0.9, np.float32), mask_score=0.4)

    def worn(self, detections):
        return detections.confident_masks()


def test_masked_clips_count_frames_with_more_faces_filled_than_people(tmp_path):
    make_video(tmp_path / "one.mp4", frames=16, audio=False)
    alone = clip_mask_rate(_TwoMaskedFaces(), tmp_path, {"one": 0}, {"one": 1})
    # The tracker fills the second "face" once two detections in a row saw its mask.
    frames = alone["clips"]["one"]["off_face_frames"]
    assert 3 <= frames <= 6 and alone["off_face_frames"] == frames
    assert alone["filled_rate"] > 0.8
    assert clip_mask_rate(_TwoMaskedFaces(), tmp_path, {"one": 0}, {"one": 2})["off_face_frames"] == 0


def test_clip_fills_count_what_the_whole_pipeline_filled(tmp_path, monkeypatch):
    import training.evaluation.evaluate_precision as ep

    make_video(tmp_path / "one.mp4", frames=4, audio=False)
    filled = [[], [True], [True, False], [True, True]]  # per frame, each face's "filled"

    def fake_run(source, output, max_frames, extra):
        path = Path(extra[extra.index("--detections") + 1])
        path.write_text("".join(json.dumps({"frame": i, "faces": [{"track_id": k, "filled": f} for k, f in enumerate(fs)]})
                                + "\n" for i, fs in enumerate(filled)))

    monkeypatch.setattr(ep, "_run", fake_run)
    result = ep.clip_fills(tmp_path, {"one": 1}, {"one": 1}, tmp_path, [])
    # From the first masked frame (1) on, every frame has a face filled; frame 3 has two for one person.
    assert result["frames"] == 3 and result["filled_rate"] == 1.0 and result["off_face_frames"] == 1
    assert result["clips"]["one"] == {"frames": 3, "filled_rate": 1.0, "off_face_frames": 1}
    assert ep.clip_fills(tmp_path, {}, {}, tmp_path, [])["filled_rate"] == 0.75


def test_labelled_non_faces_count_where_a_worn_mask_box_of_their_photo_covers_them():
    nonfaces = [("a.jpg", np.array([10, 10, 50, 50], np.float32)), ("b.jpg", np.array([0, 0, 20, 20], np.float32))]
    worn = {"a.jpg": [[100, 100, 140, 140], [12, 11, 50, 52]], "c.jpg": [[0, 0, 20, 20]]}
    assert nonface_fills(worn, nonfaces) == [0]
    assert nonface_fills({"a.jpg": [[30, 30, 70, 70]]}, nonfaces) == []  # IoU 0.14
    labelled = load_nonfaces()
    assert len(labelled) >= 10 and all(box.shape == (4,) and box[2] > box[0] for _, box in labelled)


def test_a_photo_counts_as_altered_only_off_its_own_faces():
    source = np.full((160, 240, 3), 120, np.uint8)
    box = [40.0, 40.0, 80.0, 90.0]  # its crop window at 1.2 is 60 px square around the box's centre
    on_face = source.copy()
    on_face[60:90, 45:75] = 250
    assert not altered_outside_faces(source, on_face, [box], crop_scale=1.2)
    elsewhere = source.copy()
    elsewhere[20:60, 170:210] = 250  # a ghost face in the background
    assert altered_outside_faces(source, elsewhere, [box], crop_scale=1.2)
    assert altered_outside_faces(source, on_face, [], crop_scale=1.2)


def test_photo_folder_runs_the_photos_as_one_folder(tiny_weights, tmp_path):
    import cv2

    photos = []
    for i, size in enumerate(((64, 48), (100, 80))):
        path = tmp_path / f"p{i}.png"
        cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), np.uint8))
        photos.append(path)
    det, gen = tiny_weights
    result = photo_folder(photos, tmp_path / "work", ["--detector-weights", str(det), "--generator-weights", str(gen)],
                          crop_scale=1.2)
    # Untrained weights find no face, so no photo may change.
    assert result["images"] == 2 and result["altered_outside_rate"] == 0.0


@pytest.fixture(scope="module")
def negative_cache(shared_data, tmp_path_factory) -> Path:
    """A face cache of a few real unmasked photos (dlib, the dev extras)."""
    from training.data.landmarks import LandmarkDetector
    from training.data.negatives import build_face_cache, save_face_cache

    path = tmp_path_factory.mktemp("negatives") / "faces.npz"
    paths = negative_files(shared_data, "lfw", "train")[:6] + negative_files(shared_data, "photos", "train")[:4]
    save_face_cache(build_face_cache(paths, shared_data, LandmarkDetector()), path)
    return path


@pytest.fixture(scope="module")
def utk_landmarks(shared_data, tmp_path_factory) -> Path:
    full = REPO / "cache" / "utkface_landmarks.npz"
    if full.is_file():
        return full
    from training.data.landmarks import LandmarkDetector, build_cache, save_landmark_cache

    path = tmp_path_factory.mktemp("landmarks") / "utk.npz"
    save_landmark_cache(build_cache(images=shared_data / "faces" / "utkface", detector=LandmarkDetector(), limit=40), path)
    return path


def test_hard_negative_scenes_label_faces_and_never_a_face_mask(shared_data, utk_landmarks, negative_cache):
    from training.data.detector_data import DataUnavailableError, DetectorDataConfig, DetectorSceneDataset

    real = DetectorSceneDataset(
        data_root=shared_data, landmarks=utk_landmarks, negatives=negative_cache, seed=1,
        config=DetectorDataConfig(negative_fraction=1.0, real_fraction=0.0, p_mouth_object=1.0),
    )
    faces = 0
    for i in range(8):
        _, target = real[i]
        assert FACE_MASK not in target["labels"].tolist()
        faces += int((target["labels"] == FACE).sum())
    assert faces >= 6
    staged = DetectorSceneDataset(
        data_root=shared_data, landmarks=utk_landmarks, seed=2,
        config=DetectorDataConfig(real_fraction=0.0, p_unmasked=1.0, p_mouth_object=1.0, p_loose_mask=1.0),
    )
    for i in range(8):
        _, target = staged[i]
        assert FACE_MASK not in target["labels"].tolist() and FACE in target["labels"].tolist()
    with pytest.raises(DataUnavailableError):
        DetectorSceneDataset(data_root=shared_data, landmarks=utk_landmarks, negatives=None,
                             config=DetectorDataConfig(negative_fraction=0.5))


def test_drawn_hands_and_mesh_sleeves_are_unlabelled_and_leave_the_faces_alone(shared_data, utk_landmarks):
    from training.data.detector_data import DetectorDataConfig, DetectorSceneDataset

    def scenes(**extra):
        dataset = DetectorSceneDataset(data_root=shared_data, landmarks=utk_landmarks, seed=3,
                                       config=DetectorDataConfig(real_fraction=0.0, p_unmasked=1.0, **extra))
        # The synthetic scene alone: the photometric changes after it draw from the same generator.
        return [dataset._synthetic(240, 320, np.random.default_rng(i)) for i in range(6)]

    plain, drawn = scenes(), scenes(p_hand=1.0, p_sheer_limb=1.0)
    changed = 0
    for (image, instances), (with_negatives, negatives_instances) in zip(plain, drawn):
        assert [i.worn for i in negatives_instances] == [None] * len(negatives_instances)
        assert len(negatives_instances) == len(instances)
        faces = np.zeros(image.shape[:2], bool)
        for inst in instances:
            x1, y1, x2, y2 = inst.face_box.astype(int)
            faces[y1:y2, x1:x2] = True
        moved = np.abs(with_negatives.astype(int) - image.astype(int)).max(axis=2) > 20
        changed += int(moved.sum() > 200)
        assert not (moved & faces).any()  # drawn away from the faces
    assert changed >= 4


class _FixedDetector:
    """Stands in for stream.detect.FaceDetector: returns the same detections for any image."""

    def __init__(self, detections):
        self.detections = detections

    def __call__(self, image):
        return self.detections


def _detections(worn: list[bool], probs: list[float]):
    from stream.records import Detections

    masks = np.zeros((len(worn), 60, 80), bool)
    for k, w in enumerate(worn):
        masks[k, 35:50, 10 + 30 * k:30 + 30 * k] = w
    boxes = np.array([[8 + 30 * k, 10, 32 + 30 * k, 52] for k in range(len(worn))], np.float32)
    return Detections(boxes=boxes, scores=np.ones(len(worn), np.float32), masks=masks,
                      mask_probs=np.array(probs, np.float32))


def test_pseudo_labels_keep_only_images_whose_every_face_wears_a_confirmed_mask():
    from training.data.pseudo_masks import label_image

    image = np.zeros((60, 80, 3), np.uint8)
    sure = label_image(_FixedDetector(_detections([True, True], [0.99, 0.97])), image, min_prob=0.95)
    assert sure is not None and len(sure[0]) == 2 and sure[1].shape == (2, 60, 80)
    # One unmasked face, or one the verifier doubts, would be an unlabelled masked face or a wrong label.
    assert label_image(_FixedDetector(_detections([True, False], [0.99, 0.0])), image, min_prob=0.95) is None
    assert label_image(_FixedDetector(_detections([True, True], [0.99, 0.6])), image, min_prob=0.95) is None


def test_pseudo_labelled_scenes_put_each_worn_mask_inside_its_face(shared_data, utk_landmarks, tmp_path):
    import cv2

    from training.data.detector_data import DataUnavailableError, DetectorDataConfig, DetectorSceneDataset
    from training.data.negatives import masked_photo_files
    from training.data.pseudo_masks import build_pseudo_labels, load_pseudo_labels, save_pseudo_labels

    paths = masked_photo_files(shared_data, "train")[:3]
    shapes = [cv2.imread(str(p)).shape[:2] for p in paths]

    class Centred:
        """A masked face in the middle of each photo."""

        def __call__(self, image):
            from stream.records import Detections

            h, w = image.shape[:2]
            masks = np.zeros((1, h, w), bool)
            masks[0, h // 2:h * 3 // 4, w // 4:w * 3 // 4] = True
            return Detections(boxes=np.array([[w / 5, h / 5, w * 4 / 5, h * 4 / 5]], np.float32),
                              scores=np.ones(1, np.float32), masks=masks, mask_probs=np.ones(1, np.float32))

    labels = build_pseudo_labels(Centred(), paths, shared_data, min_prob=0.95)
    save_pseudo_labels(labels, tmp_path / "pseudo.npz")
    loaded = load_pseudo_labels(tmp_path / "pseudo.npz")
    boxes, worn = loaded.faces_of(1)
    assert len(loaded.files) == 3 and worn[0].shape == shapes[1] and worn[0].sum() > 0
    # A photo holding a labelled non-face is left out whole: labelled or not, it would teach something.
    fewer = build_pseudo_labels(Centred(), paths, shared_data, min_prob=0.95, leave_out=frozenset({paths[1].name}))
    assert [Path(f).name for f in fewer.files] == [paths[0].name, paths[2].name]
    data = DetectorSceneDataset(data_root=shared_data, landmarks=utk_landmarks, pseudo=tmp_path / "pseudo.npz", seed=3,
                                config=DetectorDataConfig(real_fraction=0.0, pseudo_fraction=1.0))
    for i in range(6):
        _, target = data[i]
        labels_i = target["labels"].tolist()
        assert labels_i.count(FACE) == 1 and labels_i.count(FACE_MASK) <= 1
        if FACE_MASK in labels_i:
            face = target["masks"][labels_i.index(FACE)].bool()
            mask = target["masks"][labels_i.index(FACE_MASK)].bool()
            assert not (mask & ~face).any()
    with pytest.raises(DataUnavailableError):
        DetectorSceneDataset(data_root=shared_data, landmarks=utk_landmarks, pseudo=None,
                             config=DetectorDataConfig(pseudo_fraction=0.5))


def test_eyes_count_as_altered_only_where_the_output_changed_them():
    from training.evaluation.evaluate_eyes import eyes_altered

    rng = np.random.default_rng(0)
    before = rng.integers(60, 200, (80, 80, 3), dtype=np.uint8)
    landmarks = np.zeros((68, 2), np.float32)
    for start, cx in ((36, 25), (42, 55)):  # two eyes as hexagons around (cx, 30)
        angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        landmarks[start:start + 6] = np.stack([cx + 6 * np.cos(angles), 30 + 3 * np.sin(angles)], axis=1)
    mouth_filled = before.copy()
    mouth_filled[50:70] = 128  # a fill below the eyes
    eye_filled = mouth_filled.copy()
    eye_filled[26:34, 48:62] = 128  # and over the left eye of the image's right side
    assert not eyes_altered(before, before, landmarks, 12.0)
    assert not eyes_altered(before, mouth_filled, landmarks, 12.0)
    assert eyes_altered(before, eye_filled, landmarks, 12.0)
