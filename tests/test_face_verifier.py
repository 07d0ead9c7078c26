"""The face verifier's training data: windows without faces, drawn hands, the recall threshold."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np

from stream.geometry import CropWindow, box_overlap
from training.data.detector_data import draw_hand
from training.train.train_face_verifier import Collector, choose_threshold, collect_photos, free_windows


def test_free_windows_keep_their_crop_windows_off_the_faces():
    rng = np.random.default_rng(0)
    faces = np.array([[100, 40, 160, 110], [300, 60, 350, 120]], np.float32)
    boxes = free_windows((480, 640), faces, rng, 30, 1.2, max_face_share=0.0)
    assert len(boxes) >= 20
    for box in boxes:
        window = CropWindow.for_face(box, 1.2)
        outer = np.array([[window.x1, window.y1, window.x1 + window.side, window.y1 + window.side]], np.float32)
        assert box_overlap(faces, outer).max() == 0.0
    # Most lie below the faces, where bodies, arms and hands are.
    assert np.mean([(b[1] + b[3]) / 2 > 110 for b in boxes]) > 0.6


def test_drawn_hand_lies_inside_its_box_and_mask():
    rng = np.random.default_rng(1)
    background = np.full((96, 96, 3), 30, np.uint8)
    for _ in range(10):
        image, matte, box = draw_hand(background, rng)
        x1, y1, x2, y2 = box.astype(int)
        assert image.shape == background.shape and 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        inside = np.abs(image[y1:y2, x1:x2].astype(int) - 30).max(axis=2) > 25
        assert inside.mean() > 0.3  # skin over the dark background
        # The matte covers every pixel the hand changed, so the hand can be cut out and laid elsewhere.
        changed = np.abs(image.astype(int) - 30).max(axis=2) > 2
        assert (matte[changed] > 0.01).all() and matte[y1:y2, x1:x2].max() > 0.99


def test_threshold_keeps_the_asked_share_of_faces():
    probs = np.concatenate([np.linspace(0.0, 1.0, 200), np.linspace(0.0, 0.2, 100)])
    labels = np.concatenate([np.ones(200, np.uint8), np.zeros(100, np.uint8)])
    threshold = choose_threshold(probs, labels, min_recall=0.99)
    assert (probs[labels == 1] >= threshold).mean() >= 0.99
    assert choose_threshold(np.full(4, 0.9), np.ones(4, np.uint8), min_recall=0.5) == 0.5  # capped


def test_a_found_face_labelled_as_no_face_is_neither_face_nor_window(tmp_path):
    photo = tmp_path / "0001.jpg"
    cv2.imwrite(str(photo), np.full((240, 320, 3), 90, np.uint8))
    face, car = np.array([40, 30, 100, 100], np.float32), np.array([200, 120, 280, 200], np.float32)
    found = lambda image: SimpleNamespace(boxes=np.stack([face, car]))  # noqa: E731

    def crops(not_faces):
        out = Collector(64, 1.2)
        skipped = collect_photos(out, found, found, [photo], np.random.default_rng(0), windows=8, hands=0,
                                 not_faces=not_faces)
        return skipped, out.labels[True]  # the only photo (index 0) is held out

    skipped, labels = crops(None)
    assert skipped == 0 and labels.count(1) == 4  # two faces, each jittered twice
    skipped, labels = crops({photo: car[None] + 2})
    # Only the real face is a face; the car is no window either (windows keep off every found box).
    assert skipped == 1 and labels.count(1) == 2 and labels.count(0) > 0
