import json
import math
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest

from training.data import masked_clips
from training.evaluation import evaluate_temporal
from training.data.masked_clips import (
    ClipMasks,
    clip_writer,
    load_clip_masks,
    output_size,
    save_clip_masks,
    scale_landmarks,
    smooth_landmarks,
)

from stream.records import Frame
from stream.sink import encode_rle
from tests.media import video_timestamps


def test_output_size_scales_down_to_even_sides():
    assert output_size((1280, 720), 640) == (640, 360)
    assert output_size((480, 908), 640) == (338, 640)
    assert output_size((512, 512), 640) == (512, 512)  # never scaled up
    assert output_size((103, 51), 640) == (104, 52)


def test_smoothing_removes_jitter_keeps_linear_motion_and_fills_gaps():
    t = np.arange(40, dtype=np.float64)
    base = np.stack([np.stack([2.0 * t + k, 0.5 * t - k], -1) for k in range(68)], 1)  # (T, 68, 2)
    weights = np.ones(40)
    weights[10:13] = 0.0
    gappy = base.copy()
    gappy[10:13] = np.nan  # missing frames are interpolated, whatever they hold
    # Linear motion comes through unbiased, at the clip's ends and across the gap too.
    np.testing.assert_allclose(smooth_landmarks(gappy, weights, sigma=2.0), base, atol=1e-3)

    noisy = gappy + np.where(t % 2 == 0, 1.0, -1.0)[:, None, None]  # +-1 px frame-to-frame shake
    smooth = smooth_landmarks(noisy, weights, sigma=2.0)
    assert np.isfinite(smooth).all()
    assert np.abs(smooth - base).max() < 0.5
    assert np.abs(smooth[16:34] - base[16:34]).max() < 0.05
    assert masked_clips.jitter(smooth[16:34]) < 0.05 < 1.0 < masked_clips.jitter(noisy[16:34])


def test_smoothing_with_zero_sigma_only_fills_from_the_nearest_frame():
    lm = np.arange(5 * 68 * 2, dtype=np.float64).reshape(5, 68, 2)
    weights = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
    out = smooth_landmarks(lm, weights, sigma=0.0)
    np.testing.assert_allclose(out[1:4], lm[1:4])
    np.testing.assert_allclose(out[0], lm[1])
    np.testing.assert_allclose(out[4], lm[3])
    with pytest.raises(masked_clips.ClipError):
        smooth_landmarks(lm, np.zeros(5), sigma=1.0)


def test_scale_landmarks_keeps_pixel_centres():
    lm = np.array([[-0.5, -0.5], [99.5, 49.5], [49.5, 24.5]], np.float32)
    np.testing.assert_allclose(scale_landmarks(lm, (100, 50), (50, 25)), [[-0.5, -0.5], [49.5, 24.5], [24.5, 12]])


def _clip_masks(frames: int, h: int, w: int, faces: int = 1) -> ClipMasks:
    rng = np.random.default_rng(0)
    return ClipMasks(
        masks=rng.random((faces, frames, h, w)) < 0.3,
        boxes=np.tile(np.array([2, 2, w - 2, h - 2], np.float32), (faces, frames, 1)),
        face_ids=np.arange(faces), landmarks=np.zeros((faces, frames, 68, 2), np.float32),
        source=np.ones((faces, frames), np.int8), templates=("surgical",) * faces,
        pts=np.arange(frames) * 3, time_base=Fraction(1, 75),
    )


def test_masks_npz_round_trip(tmp_path):
    masks = _clip_masks(3, 7, 13, faces=2)  # width not a multiple of 8
    save_clip_masks(tmp_path / "m.npz", masks)
    back = load_clip_masks(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.masks, masks.masks)
    np.testing.assert_array_equal(back.boxes, masks.boxes)
    assert back.templates == masks.templates and back.time_base == masks.time_base
    np.testing.assert_array_equal(back.region(1), masks.masks[:, 1].any(0))


def _write_video(path, frames, pts, time_base=Fraction(1, 75)):
    writer = clip_writer(path, size=(frames.shape[2], frames.shape[1]), rate=Fraction(25), time_base=time_base,
                         crf=0, preset="ultrafast")
    with writer:
        for i, (frame, p) in enumerate(zip(frames, pts)):
            writer.write(Frame(index=i, image=frame, pts=int(p), time_base=time_base))


def _moving_clip(frames=6, h=32, w=48):
    out = np.zeros((frames, h, w, 3), np.uint8)
    for t in range(frames):
        out[t] = 60
        out[t, 8:24, 4 + 3 * t:20 + 3 * t] = (200, 120, 40)
    return out


def test_measure_output_on_a_synthetic_clip(tmp_path):
    gt = _moving_clip()
    masks = _clip_masks(len(gt), *gt.shape[1:3])
    _write_video(tmp_path / "gt.mp4", gt, masks.pts)
    assert video_timestamps(tmp_path / "gt.mp4") == pytest.approx((masks.pts / 75).tolist())
    detections = tmp_path / "d.jsonl"
    with open(detections, "w") as f:
        for t in range(len(gt)):
            # The exact mask on even frames, only its top half on odd ones.
            found = masks.region(t).copy()
            if t % 2:
                found[found.shape[0] // 2:] = False
            faces = [{"track_id": 1 if t < 4 else 2, "box": masks.boxes[0, t].tolist(), "score": 0.9,
                      "mask_rle": encode_rle(found)}]
            f.write(json.dumps({"frame": t, "faces": faces}) + "\n")
    half = np.mean([masks.region(t)[: gt.shape[1] // 2].sum() / masks.region(t).sum() for t in range(1, len(gt), 2)])

    same = evaluate_temporal.measure_output(tmp_path / "gt.mp4", tmp_path / "gt.mp4", masks, detections=detections)
    assert same.frames == len(gt)
    assert same.temporal_error == 0.0 and same.temporal_error_frame == 0.0
    assert same.psnr_region == evaluate_temporal.PSNR_CAP
    assert same.id_switches == 1 and same.matched == 1.0 and same.extra_tracks == 0.0
    assert same.mask_iou == pytest.approx((1.0 + half) / 2)
    below = sum(masks.region(t)[gt.shape[1] // 2:].sum() for t in range(1, len(gt), 2))
    assert same.mask_missed == pytest.approx(below / sum(masks.region(t).sum() for t in range(len(gt))))

    frozen = np.repeat(gt[:1], len(gt), 0)  # an output that ignores the motion
    _write_video(tmp_path / "frozen.mp4", frozen, masks.pts)
    stuck = evaluate_temporal.measure_output(tmp_path / "frozen.mp4", tmp_path / "gt.mp4", masks, max_frames=4)
    assert stuck.frames == 4 and stuck.id_switches is None and stuck.matched is None and stuck.mask_iou is None
    assert stuck.mask_missed is None
    assert stuck.temporal_error > 1.0 and stuck.psnr_frame < 40.0
    # The still reference scores that frozen output without encoding it (coding noise aside).
    still = evaluate_temporal.still_reference(tmp_path / "gt.mp4", masks, max_frames=4)
    assert still == pytest.approx(stuck.temporal_error, rel=0.05)
    clip = evaluate_temporal.ClipFiles("gt", tmp_path / "unused.mp4", tmp_path / "gt.mp4", tmp_path / "unused.npz")
    encoded = evaluate_temporal.encoded_reference(clip, tmp_path / "encoded.mp4", masks, max_frames=4)
    assert 0.0 < encoded < 0.5 * stuck.temporal_error  # coding noise only: the motion is kept
    c = evaluate_temporal.compare(same, stuck)
    assert c["temporal_error_ratio"] == 0.0 and c["psnr_frame_diff"] > 0


def test_measure_output_rejects_other_frame_sizes(tmp_path):
    gt = _moving_clip()
    masks = _clip_masks(len(gt), *gt.shape[1:3])
    _write_video(tmp_path / "gt.mp4", gt, masks.pts)
    _write_video(tmp_path / "small.mp4", gt[:, :16, :24].copy(), masks.pts)
    with pytest.raises(evaluate_temporal.EvaluationError):
        evaluate_temporal.measure_output(tmp_path / "small.mp4", tmp_path / "gt.mp4", masks)


def test_stream_command_follows_the_contract(tmp_path):
    clip = evaluate_temporal.ClipFiles("a", tmp_path / "a_masked.mp4", tmp_path / "a_gt.mp4", tmp_path / "a_masks.npz")
    cmd = evaluate_temporal.stream_command(
        clip, mode="off", output=tmp_path / "o.mp4", detections=tmp_path / "o.jsonl", run_stream=tmp_path / "run_stream.py",
        python="python", detect_every="3", max_frames=10, extra=["--backend", "torch"],
    )
    assert cmd == ["python", str(tmp_path / "run_stream.py"), "--input", str(clip.masked.resolve()), "--output",
                   str(tmp_path / "o.mp4"), "--detections", str(tmp_path / "o.jsonl"), "--temporal", "off",
                   "--no-progress", "--detect-every", "3", "--max-frames", "10", "--backend", "torch"]


def test_clip_maker_and_evaluator_on_real_clips(shared_data, tmp_path):
    unmasked = shared_data / "videos" / "unmasked"
    names = ["LivePortrait_driving_d3", "LivePortrait_driving_d14"]
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in names:
        if not (unmasked / f"{name}.mp4").is_file():
            pytest.skip(f"{name}.mp4 is not in ../shared")
        (videos / f"{name}.mp4").symlink_to(unmasked / f"{name}.mp4")
    out = tmp_path / "clips"
    rc = masked_clips.main(["--videos", str(videos), "--templates", str(shared_data / "mask_templates"),
                            "--out", str(out), "--max-frames", "5", "--max-side", "256"])
    assert rc == 0
    for name in names:
        masks = load_clip_masks(out / f"{name}_masks.npz")
        assert masks.masks.shape == (1, 5, 256, 256)
        assert masks.masks.sum(axis=(2, 3)).min() > 500  # a mask on every frame
        src_times = video_timestamps(unmasked / f"{name}.mp4")[:5]
        assert video_timestamps(out / f"{name}_masked.mp4") == pytest.approx(src_times)
        assert video_timestamps(out / f"{name}_gt.mp4") == pytest.approx(src_times)
    multi = load_clip_masks(out / "multi_masks.npz")
    assert multi.masks.shape == (2, 5, 128, 256)
    assert not multi.masks[0, :, :, 128:].any() and not multi.masks[1, :, :, :128].any()
    with av.open(str(out / "multi_masked.mp4")) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (256, 128)

    # The evaluator on fake pipeline outputs: the masked input itself, with ground-truth tracks.
    work = tmp_path / "work"
    work.mkdir()
    for clip in evaluate_temporal.find_clips(out):
        masks = load_clip_masks(clip.masks)
        for mode in evaluate_temporal.MODES:
            shutil.copy(clip.masked, work / f"{clip.name}_{mode}.mp4")
            with open(work / f"{clip.name}_{mode}.jsonl", "w") as f:
                for t in range(len(masks.pts)):
                    faces = [{"track_id": int(i) + 10, "box": b.tolist(), "mask_rle": encode_rle(masks.masks[f, t])}
                             for f, (i, b) in enumerate(masks.gt_boxes(t))]
                    f.write(json.dumps({"frame": t, "faces": faces}) + "\n")
    report_path = tmp_path / "temporal.json"
    assert evaluate_temporal.main(["--clips", str(out), "--work", str(work), "--reuse", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["clips"]) == {*names, "multi"}
    for r in report["clips"].values():
        for mode in evaluate_temporal.MODES:
            assert r[mode]["frames"] == 5 and r[mode]["id_switches"] == 0 and r[mode]["matched"] == 1.0
            assert r[mode]["mask_iou"] == 1.0
            # The mask differs from the face under it; the rest of the frame only by coding noise.
            assert r[mode]["psnr_region"] < r[mode]["psnr_frame"] < evaluate_temporal.PSNR_CAP
            assert math.isfinite(r[mode]["temporal_error"])
        assert r["temporal_error_ratio"] == 1.0
        assert r["input"]["temporal_error"] == r["on"]["temporal_error"]  # the fake output is the input
        assert math.isfinite(r["temporal_error_still"])
        assert r["temporal_error_encoded"] < r["input"]["temporal_error"]


def test_mask_iou_of_written_tracks():
    region = np.zeros((10, 20), bool)
    region[2:6, 4:12] = True  # 32 pixels
    shifted = np.pad(region[:, :-4], ((0, 0), (4, 0)))  # 4 px right: 16 shared of 48
    rle = encode_rle(shifted)
    track = evaluate_temporal.WrittenTrack(track_id=1, box=np.zeros(4),
                                           mask_rle={"size": rle["size"], "counts": rle["counts"].encode()})
    assert evaluate_temporal.mask_iou([track], region) == pytest.approx(16 / 48)
    assert evaluate_temporal.mask_iou([track, track], region) == pytest.approx(16 / 48)
    assert evaluate_temporal.mask_iou([], region) == 0.0
    assert evaluate_temporal.mask_iou([], np.zeros((10, 20), bool)) is None
    with pytest.raises(evaluate_temporal.EvaluationError):
        evaluate_temporal.mask_iou([track], np.zeros((20, 10), bool))


def test_iter_frames_skips_the_first_frames(tmp_path):
    gt = _moving_clip()
    masks = _clip_masks(len(gt), *gt.shape[1:3])
    _write_video(tmp_path / "gt.mp4", gt, masks.pts)
    size = (gt.shape[2], gt.shape[1])
    every = list(masked_clips.iter_frames(tmp_path / "gt.mp4", size=size, max_frames=None))
    later = list(masked_clips.iter_frames(tmp_path / "gt.mp4", size=size, max_frames=2, skip=3))
    assert [pts for _, pts in later] == [pts for _, pts in every[3:5]]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(later, every[3:5]))
