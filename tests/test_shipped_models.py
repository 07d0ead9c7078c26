"""The shipped default weights, end to end on the bundled sample clip and on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np

import run_stream
from engines.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "office_worker_720x404.mp4"


def test_shipped_weights_exist_with_model_cards():
    for spec in MODELS.values():
        assert spec.weights.exists(), f"{spec.weights} is missing"
        assert spec.weights.stat().st_size < 50 * 2**20
        assert spec.weights.with_suffix(".md").exists(), f"no model card for {spec.weights.name}"


def test_sample_clip_is_unmasked(tmp_path):
    out = tmp_path / "out.mp4"
    faces = tmp_path / "faces.jsonl"
    report = tmp_path / "run.json"
    code = run_stream.main(["--input", str(SAMPLE), "--output", str(out), "--detections", str(faces),
                            "--report", str(report), "--max-frames", "12", "--no-progress", "--log-level", "WARNING"])
    assert code == 0
    records = [json.loads(line) for line in faces.read_text().splitlines()]
    masked = [r for r in records if any(_area(f["mask_rle"]) > 500 for f in r["faces"])]
    assert len(records) == 12 and len(masked) >= 11, "the mask on the sample clip should be found"
    assert all(f["filled"] for r in masked for f in r["faces"] if _area(f["mask_rle"]) > 500)
    assert json.loads(report.read_text())["run"]["frames_filled"] == len(masked)
    with av.open(str(SAMPLE)) as a, av.open(str(out)) as b:
        index = masked[0]["frame"]
        before = next(f for i, f in enumerate(a.decode(video=0)) if i == index).to_ndarray(format="rgb24").astype(int)
        after = next(f for i, f in enumerate(b.decode(video=0)) if i == index).to_ndarray(format="rgb24").astype(int)
    box = np.array(masked[0]["faces"][0]["box"]).astype(int)
    x1, y1, x2, y2 = box
    inside = np.abs(after[y1:y2, x1:x2] - before[y1:y2, x1:x2]).mean()
    outside = np.abs(after[:, : x1 - 40] - before[:, : x1 - 40]).mean()
    assert inside > 5 * max(outside, 0.5), (inside, outside)


def _area(rle: dict) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))


def test_masked_photos_are_unmasked(tmp_path, shared_data):
    photos = sorted((shared_data / "photos" / "masked").iterdir())[:6]
    src = tmp_path / "in"
    src.mkdir()
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    faces = tmp_path / "faces.jsonl"
    assert run_stream.main(["--input", str(src), "--output", str(out), "--detections", str(faces),
                            "--no-progress", "--log-level", "WARNING"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in photos]
    changed = 0
    for p in photos:
        a = cv2.imread(str(src / p.name)).astype(int)
        b = cv2.imread(str(out / p.name)).astype(int)
        changed += np.abs(a - b).max(axis=2).__gt__(40).mean() > 0.01
    assert changed >= 5, f"only {changed} of {len(photos)} photos were changed"


def test_verifier_on_keeps_the_sample_clips_mask_and_says_it_ran(tmp_path):
    out = tmp_path / "out.mp4"
    faces = tmp_path / "faces.jsonl"
    report = tmp_path / "report.json"
    code = run_stream.main(["--input", str(SAMPLE), "--output", str(out), "--detections", str(faces),
                            "--report", str(report), "--verifier", "on", "--max-frames", "8", "--no-progress",
                            "--log-level", "WARNING"])
    assert code == 0
    records = [json.loads(line) for line in faces.read_text().splitlines()]
    assert sum(any(_area(f["mask_rle"]) > 500 for f in r["faces"]) for r in records) >= 7
    models = json.loads(report.read_text())["models"]
    # The shipped generator takes a reference, so its form without one runs the faces that have none.
    assert "verifier" in models and "generator_noref" in models


def test_face_verifier_on_keeps_the_sample_clips_face_and_says_it_ran(tmp_path):
    faces = tmp_path / "faces.jsonl"
    report = tmp_path / "report.json"
    code = run_stream.main(["--input", str(SAMPLE), "--output", str(tmp_path / "out.mp4"), "--detections", str(faces),
                            "--report", str(report), "--face-verifier", "on", "--max-frames", "8", "--no-progress",
                            "--log-level", "WARNING"])
    assert code == 0
    records = [json.loads(line) for line in faces.read_text().splitlines()]
    assert sum(any(_area(f["mask_rle"]) > 500 for f in r["faces"]) for r in records) >= 7
    assert "face_verifier" in json.loads(report.read_text())["models"]
