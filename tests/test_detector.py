"""Detector: export wrapper, ONNX parity, save/load, scene dataset, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.models.detector import (
    CLASS_NAMES,
    FACE,
    FACE_MASK,
    OUTPUT_NAMES,
    DetectorConfig,
    DetectorConfigError,
    DetectorExport,
    build_detector,
    load_detector,
    load_detector_meta,
    save_detector,
)
from stream.geometry import Letterbox
from tests.media import make_video
from training.evaluation.evaluate_detector import (
    MaskScore,
    average_precision,
    by_area,
    evaluate_clips,
    load_clip_annotations,
    load_clip_people,
    mask_scores,
    score_masks,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LANDMARKS = REPO / "cache" / "utkface_landmarks.npz"
SIZE = (128, 160)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    # Score threshold 0: an untrained model still returns detections to compare.
    config = DetectorConfig(input_size=SIZE, box_score_thresh=0.0, box_detections_per_img=5)
    return build_detector(config).eval(), config


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Smooth blobs rather than white noise, closer to what the network sees.
    small = torch.rand(1, 3, SIZE[0] // 16, SIZE[1] // 16, generator=g)
    return torch.nn.functional.interpolate(small, size=SIZE, mode="bilinear", align_corners=False)


def test_constants():
    assert CLASS_NAMES[FACE] == "face" and CLASS_NAMES[FACE_MASK] == "face_mask" and CLASS_NAMES[0] == "__background__"


def test_config_validation():
    with pytest.raises(DetectorConfigError):
        DetectorConfig(backbone="vgg")
    with pytest.raises(DetectorConfigError):
        DetectorConfig(input_size=(100, 320))
    config = DetectorConfig(backbone="resnet18", norm="groupnorm")
    assert DetectorConfig.from_dict(config.to_dict()) == config


def test_export_outputs(small_model):
    model, config = small_model
    with torch.inference_mode():
        boxes, labels, scores, masks = DetectorExport(model)(_image())
    n = boxes.shape[0]
    assert n > 0
    assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert scores.shape == (n,) and scores.dtype == torch.float32
    assert masks.shape == (n, 1, *config.input_size) and masks.dtype == torch.float32
    assert set(labels.tolist()) <= {FACE, FACE_MASK}
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    assert torch.all(boxes[:, 2] >= boxes[:, 0]) and torch.all(boxes[:, 3] >= boxes[:, 1])
    assert float(boxes[:, 2].max()) <= SIZE[1] and float(boxes[:, 3].max()) <= SIZE[0]
    assert torch.all(scores[:-1] >= scores[1:])


def test_onnx_matches_torch(small_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, _ = small_model
    wrapper = DetectorExport(model)
    image = _image(1)
    path = tmp_path / "detector.onnx"
    with torch.inference_mode():
        expected = wrapper(image)
    torch.onnx.export(
        wrapper, (image,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=list(OUTPUT_NAMES),
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    assert [i.name for i in session.get_inputs()] == ["image"]
    got = session.run(None, {"image": image.numpy()})
    assert expected[0].shape[0] > 0
    for name, e, g in zip(OUTPUT_NAMES, expected, got):
        assert g.shape == tuple(e.shape), name
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-3, atol=2e-3, err_msg=name)


def test_save_load_roundtrip(small_model, tmp_path):
    model, config = small_model
    path = tmp_path / "det.pt"
    save_detector(model, config, path, meta={"steps": 7, "data": "none"})
    loaded, loaded_config = load_detector(path)
    assert loaded_config == config and not loaded.training
    assert load_detector_meta(path)["steps"] == 7
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == ref[k].dtype
        if v.is_floating_point():
            torch.testing.assert_close(v, ref[k], rtol=1e-2, atol=1e-3)


def test_letterbox_pads_right_bottom():
    image = np.full((240, 320, 3), 200, np.uint8)
    fit = Letterbox.fit(image.shape[:2], (320, 320))
    canvas = fit.apply(image, (320, 320))
    assert canvas.shape == (320, 320, 3) and fit.scale == pytest.approx(1.0)
    assert canvas[:240].min() == 200 and canvas[240:].max() == 0
    fit = Letterbox.fit((960, 480), (320, 320))
    canvas = fit.apply(np.full((960, 480, 3), 9, np.uint8), (320, 320))
    assert fit.scale == pytest.approx(1 / 3) and canvas[:, :160].min() == 9 and canvas[:, 160:].max() == 0
    grey = fit.apply(np.full((960, 480), 7, np.uint8), (320, 320))  # single-channel images keep their rank
    assert grey.shape == (320, 320) and grey[:, :160].min() == 7 and grey[:, 160:].max() == 0


def test_average_precision_and_mask_scores():
    gt = {0: np.array([[0, 0, 10, 10]], float), 1: np.array([[5, 5, 20, 20]], float)}
    perfect = [(0, 0.9, np.array([0, 0, 10, 10.0])), (1, 0.8, np.array([5, 5, 20, 20.0]))]
    assert average_precision(perfect, gt) == pytest.approx(1.0)
    # A confident false positive ranks first: precision 1/2 at recall 0.5 and 2/3 at recall 1.
    worse = [(0, 0.95, np.array([50, 50, 60, 60.0]))] + perfect
    assert average_precision(worse, gt) == pytest.approx(2 / 3)
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    (iou, f), = mask_scores([a], [b, a])
    assert iou == pytest.approx(1.0) and f == pytest.approx(1.0)
    assert mask_scores([a], []) == [(0.0, 0.0)]


def test_mask_scores_by_area_with_one_pixel_references():
    small = np.zeros((100, 100), bool)
    small[10:20, 10:20] = True  # 100 px: grown 12x12, shrunk 8x8
    large = np.zeros((100, 100), bool)
    large[30:90, 30:90] = True  # 3600 px
    one_px_off = np.zeros((100, 100), bool)
    one_px_off[11:21, 10:20] = True
    scores = score_masks([small, large], [one_px_off])
    assert scores[0] == MaskScore(iou=90 / 110, f=pytest.approx(0.9), area=100.0,
                                  label_grown_iou=100 / 144, label_shrunk_iou=64 / 100)
    assert scores[1].iou == 0.0 and scores[1].label_grown_iou == pytest.approx(3600 / 62**2)
    buckets = by_area(scores + score_masks([np.zeros((5, 5), bool)], []))  # empty: in no bucket
    assert [(b["min_px"], b["max_px"], b["instances"]) for b in buckets] == [(12, 400, 1), (1024, 4096, 1)]
    assert buckets[0]["mIoU"] == pytest.approx(90 / 110)
    assert buckets[0]["label_shrunk_1px_mIoU"] == pytest.approx(0.64)


needs_data = pytest.mark.skipif(not (DATA / "faces" / "utkface").is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory) -> Path:
    """The full landmark cache when it was built; otherwise a small one made here (a fresh clone)."""
    if LANDMARKS.is_file():
        return LANDMARKS
    from training.data.landmarks import LandmarkDetector, build_cache, save_landmark_cache

    path = tmp_path_factory.mktemp("landmarks") / "utkface_landmarks.npz"
    cache = build_cache(images=DATA / "faces" / "utkface", detector=LandmarkDetector(), limit=60)
    save_landmark_cache(cache, path)
    return path


@needs_data
def test_scene_targets_are_consistent(landmarks):
    from training.data.detector_data import DetectorDataConfig, DetectorSceneDataset

    ds = DetectorSceneDataset(
        data_root=DATA, landmarks=landmarks, config=DetectorDataConfig(input_size=(320, 320)), split="train", seed=3
    )
    n_masks = 0
    for i in range(6):
        image, target = ds[i]
        assert image.shape == (3, 320, 320) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert boxes.shape == (len(labels), 4) and masks.shape == (len(labels), 320, 320)
        assert set(labels.tolist()) <= {FACE, FACE_MASK}
        assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])
        assert bool(torch.all(boxes >= 0)) and bool(torch.all(boxes <= 320))
        faces = boxes[labels == FACE]
        for box, mask in zip(boxes[labels == FACE_MASK], masks[labels == FACE_MASK]):
            n_masks += 1
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # The worn mask lies (almost entirely) inside one of the face boxes.
            inside = max(
                float(((xs >= f[0] - 2) & (xs <= f[2] + 2) & (ys >= f[1] - 2) & (ys <= f[3] + 2)).float().mean())
                for f in faces
            )
            assert inside > 0.95
    assert n_masks > 0
    # Same index, same scene.
    again, _ = ds[0]
    assert torch.equal(again, ds[0][0])


SHIPPED = REPO / "engines" / "weights" / "detector_mobilenet_v3.pt"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped detector weights")
def test_shipped_weights_run():
    model, config = load_detector(SHIPPED)
    assert config.backbone == "mobilenet_v3" and not model.training
    assert int(load_detector_meta(SHIPPED)["steps"]) > 0
    with torch.inference_mode():
        boxes, labels, scores, masks = DetectorExport(model)(torch.zeros(1, 3, *config.input_size))
    assert masks.shape[1:] == (1, *config.input_size) and boxes.shape == (len(labels), 4)


def test_clip_detection_rate_counts_only_annotated_frames(tmp_path):
    make_video(tmp_path / "a.mp4", frames=6, width=64, height=48, audio=False)
    calls = []

    def predictor(image):
        calls.append(image.shape)
        found = len(calls) % 2 == 0  # a face_mask on every second frame scored
        return {"labels": np.array([FACE_MASK if found else FACE]), "scores": np.array([0.9])}

    result = evaluate_clips(predictor, tmp_path, 0.5, {"a": 2})
    assert len(calls) == 4 and calls[0] == (48, 64, 3)
    assert result["clips"]["a"] == {"frames": 4, "face_mask_found_rate": 0.5}
    assert result["face_mask_found_rate"] == 0.5


def test_every_shared_masked_clip_is_annotated(shared_data):
    stems = {p.stem for p in (shared_data / "videos" / "masked").glob("*.mp4")}
    assert stems and stems <= set(load_clip_annotations()) and stems <= set(load_clip_people())


def test_landmark_cache_reads_without_dlib(tmp_path):
    """Training reads only the cache; the GPU image it runs on has no dlib."""
    import subprocess
    import sys

    from training.data.landmarks import LandmarkCache, save_landmark_cache

    path = tmp_path / "cache.npz"
    marks = np.arange(2 * 68 * 2, dtype=np.float32).reshape(2, 68, 2)
    save_landmark_cache(LandmarkCache(files=("a.jpg", "b.jpg"), landmarks=marks, detected=np.array([True, False])), path)
    code = (
        "import sys; sys.modules['dlib'] = None\n"  # makes any `import dlib` raise ImportError
        "from training.data.landmarks import load_landmark_cache\n"
        f"c = load_landmark_cache({str(path)!r})\n"
        "print(c.files, float(c.landmarks[1, 67, 1]), c.detected.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["('a.jpg',", "'b.jpg')", "271.0", "[True,", "False]"]


def test_letterbox_maps_boxes_and_masks_back_to_the_frame():
    fit = Letterbox.fit((240, 480), (320, 320))  # scale 2/3: content 320 x 160, padding below
    boxes = fit.boxes_to_frame(np.array([[32, 16, 64, 48]], np.float32))
    np.testing.assert_allclose(boxes, [[48, 24, 96, 72]])
    probs = np.zeros((320, 320), np.float32)
    probs[:160, :160] = 1.0  # the left half of the content; the padding below is ignored
    back = fit.map_to_frame(probs, (240, 480))
    assert back.shape == (240, 480) and back[:, :230].min() > 0.99 and back[:, 250:].max() < 0.01
