import math

import numpy as np
import pytest

from stream.geometry import box_iou, box_overlap

from training.metrics.temporal_metrics import (
    IdSwitchCounter,
    StillReference,
    TemporalErrorAccumulator,
    gradient_magnitude,
    id_switches,
    psnr_per_frame,
    structural_sharpness,
    temporal_error,
)


def _clip(values) -> np.ndarray:
    """(T, 2, 2, 3) uint8 clip from a (T, 2, 2) list of grey levels."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


def test_identical_output_scores_zero_and_infinite_psnr():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    region = rng.random((4, 5, 6)) < 0.5
    assert temporal_error(gt, gt.copy(), region) == 0.0
    assert np.all(np.isinf(psnr_per_frame(gt, gt.copy())))
    assert np.all(np.isinf(psnr_per_frame(gt, gt.copy(), region)))


def test_constant_offset_is_temporally_stable_but_has_finite_psnr():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 240, size=(3, 4, 4, 3), dtype=np.uint8)
    out = gt + 10
    region = np.ones((3, 4, 4), bool)
    assert temporal_error(out, gt, region) == 0.0
    # MSE = 10 ** 2 everywhere.
    np.testing.assert_allclose(psnr_per_frame(out, gt), 10 * math.log10(255**2 / 100), rtol=1e-12)


def test_flicker_scores_its_amplitude():
    gt = _clip([[[100, 100], [100, 100]]] * 4)
    out = _clip([[[100, 100], [100, 100]], [[104, 104], [104, 104]]] * 2)
    region = np.ones((4, 2, 2), bool)
    assert temporal_error(out, gt, region) == pytest.approx(4.0)


def test_flicker_on_part_of_the_region_is_averaged_over_the_region():
    gt = _clip([[[50, 60], [70, 80]]] * 3)
    out = gt.copy()
    out[1, 0, 0] += 6  # one of four pixels jumps up at t=1 and back at t=2
    region = np.ones((3, 2, 2), bool)
    # t=1: |+6| on one pixel of four -> 1.5; t=2: |-6| -> 1.5.
    assert temporal_error(out, gt, region) == pytest.approx(1.5)


def test_region_is_the_union_of_consecutive_regions():
    gt = _clip([[[50, 50], [50, 50]]] * 2)
    out = gt.copy()
    out[1, 0, 0] = 56
    region = np.zeros((2, 2, 2), bool)
    region[0, 0, 0] = True  # the flickering pixel is only in the previous frame's region
    region[1, 1, 1] = True
    assert temporal_error(out, gt, region) == pytest.approx(3.0)


def test_moving_ground_truth_followed_exactly_scores_zero():
    gt = _clip([[[10 * t, 20], [30, 40 + t]] for t in range(5)])
    assert temporal_error(gt.copy(), gt, np.ones((5, 2, 2), bool)) == 0.0
    frozen = np.repeat(gt[:1], 5, axis=0)  # output stuck on frame 0 misses the motion
    # Per step: |0 - 10| and |0 - 1| on one pixel each of four -> (10 + 1) / 4.
    assert temporal_error(frozen, gt, np.ones((5, 2, 2), bool)) == pytest.approx(11 / 4)


def test_still_reference_is_the_ground_truths_own_change_in_the_region():
    gt = _clip([[[10 * t, 20], [30, 40 + t]] for t in range(5)])
    region = np.zeros((5, 2, 2), bool)
    region[:, 0, 0] = True  # only the pixel that moves by 10 per frame
    still = StillReference()
    for t in range(5):
        still.update(gt[t], region[t])
    assert still.value == pytest.approx(10.0)
    # Scored like any output: the same as a clip stuck on the first frame.
    assert still.value == pytest.approx(temporal_error(np.repeat(gt[:1], 5, axis=0), gt, region))


def test_empty_regions_are_skipped_and_all_empty_is_nan():
    gt = _clip([[[0, 0], [0, 0]]] * 3)
    out = _clip([[[0, 0], [0, 0]], [[8, 8], [8, 8]], [[8, 8], [8, 8]]])
    region = np.zeros((3, 2, 2), bool)
    assert math.isnan(temporal_error(out, gt, region))
    region[2] = True  # only the 1 -> 2 step is scored, where nothing changes
    assert temporal_error(out, gt, region) == 0.0


def test_accumulator_matches_array_function():
    rng = np.random.default_rng(2)
    out = rng.integers(0, 256, size=(6, 8, 9, 3), dtype=np.uint8)
    gt = rng.integers(0, 256, size=(6, 8, 9, 3), dtype=np.uint8)
    region = rng.random((6, 8, 9)) < 0.3
    acc = TemporalErrorAccumulator()
    assert acc.update(out[0], gt[0], region[0]) is None
    for t in range(1, 6):
        acc.update(out[t], gt[t], region[t])
    assert len(acc.frame_errors) == 5
    assert acc.value == pytest.approx(temporal_error(out, gt, region))


def test_psnr_inside_region_ignores_errors_outside():
    gt = _clip([[[100, 100], [100, 100]]])
    out = gt.copy()
    out[0, 1, 1] = 120
    region = np.zeros((1, 2, 2), bool)
    region[0, 0, :] = True
    assert np.isinf(psnr_per_frame(out, gt, region)[0])
    # One pixel of four off by 20: MSE = 400 / 4 = 100.
    assert psnr_per_frame(out, gt)[0] == pytest.approx(10 * math.log10(255**2 / 100))
    assert math.isnan(psnr_per_frame(out, gt, np.zeros((1, 2, 2), bool))[0])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        temporal_error(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5, 3), np.uint8), np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError):
        psnr_per_frame(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8), np.ones((2, 4, 5), bool))


def test_box_iou_and_overlap():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])
    assert iou[1].tolist() == [0.0, 0.0, 0.0]  # an empty box overlaps nothing
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10])[0, 0] == pytest.approx(50 / 150)
    assert box_overlap(np.array([[5, 0, 15, 10]]), b)[0].tolist() == pytest.approx([0.5, 1.0, 0.0])


A = np.array([0, 0, 10, 10], float)
B = np.array([50, 0, 60, 10], float)


def test_stable_tracks_have_no_switch():
    tracks = [[(1, A), (2, B)]] * 5
    gts = [[(0, A + 1), (1, B - 1)]] * 5
    assert id_switches(tracks, gts) == 0


def test_one_face_changing_track_id_is_one_switch():
    tracks = [[(1, A)], [(1, A)], [(7, A)], [(7, A)]]
    gts = [[(0, A)]] * 4
    assert id_switches(tracks, gts) == 1


def test_two_faces_swapping_ids_is_two_switches():
    # CLEAR-MOT counts a switch per ground-truth object whose track changes.
    tracks = [[(1, A), (2, B)], [(1, A), (2, B)], [(2, A), (1, B)]]
    gts = [[(0, A), (1, B)]] * 3
    assert id_switches(tracks, gts) == 2


def test_lost_then_recovered_with_same_id_is_no_switch_but_new_id_is():
    gts = [[(0, A)]] * 4
    assert id_switches([[(1, A)], [], [], [(1, A)]], gts) == 0
    assert id_switches([[(1, A)], [], [], [(2, A)]], gts) == 1


def test_track_far_from_gt_is_not_matched():
    gts = [[(0, A)]] * 3
    assert id_switches([[(1, A)], [(2, B)], [(1, A)]], gts) == 0
    counter = IdSwitchCounter()
    for tracks, g in zip([[(1, A)], [(2, B)], [(1, A)]], gts):
        counter.update(tracks, g)
    assert (counter.matched_count, counter.gt_count, counter.track_count) == (2, 3, 3)


def test_kept_correspondence_beats_a_better_new_match():
    counter = IdSwitchCounter(iou=0.5)
    counter.update([(1, A)], [(0, A)])
    # Track 1 drifted a little but still overlaps enough; track 2 fits better but CLEAR-MOT keeps 1.
    match = counter.update([(1, A + [2, 0, 2, 0]), (2, A)], [(0, A)])
    assert match == {0: 1}
    assert counter.switches == 0


def test_id_switches_needs_equal_lengths():
    with pytest.raises(ValueError):
        id_switches([[]], [[], []])


def test_structural_sharpness_counts_edges_not_grain():
    truth = np.full((64, 64, 3), 120, np.uint8)
    truth[30:34, 12:52] = 40  # a lip line
    region = np.zeros((64, 64), bool)
    region[16:48, 8:56] = True
    grain = np.random.default_rng(0).normal(0, 12, (64, 64, 1))
    smear = np.full_like(truth, 105)
    grainy_smear = np.clip(smear + grain, 0, 255).astype(np.uint8)
    grainy_face = np.clip(truth + grain, 0, 255).astype(np.uint8)

    def plain(out):
        return gradient_magnitude(out)[region].mean() / gradient_magnitude(truth)[region].mean()

    assert plain(grainy_smear) > 1.0  # grain alone reads as more detail than the true face
    assert structural_sharpness(grainy_smear, truth, region) < 0.3
    assert structural_sharpness(grainy_face, truth, region) > 0.8
    assert structural_sharpness(truth, truth, region) == 1.0
