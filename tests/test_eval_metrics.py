"""Every metric on tiny hand-made label images whose answers are worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nucflow.errors import EvaluationError
from nucflow.evaluation import metrics as m


def _scores(pred, true, **kw) -> dict[str, float]:
    return m.count_instances(np.asarray(pred), np.asarray(true), **kw).scores()


@pytest.fixture
def two_nuclei() -> np.ndarray:
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:3] = 4
    labels[3:6, 4:8] = 9
    return labels


def test_identity_is_perfect(two_nuclei):
    s = _scores(two_nuclei, two_nuclei)
    for name in ("dice", "balanced_accuracy", "precision", "recall", "aji", "object_dice"):
        assert s[name] == 1.0, name
    assert s["object_hausdorff"] == 0.0
    assert s["f1_50"] == 1.0 and s["pq"] == 1.0
    assert s["n_pred"] == s["n_true"] == 2


def test_ids_do_not_matter(two_nuclei):
    renumbered = np.where(two_nuclei == 4, 1000, np.where(two_nuclei == 9, 3, 0))
    assert _scores(renumbered, two_nuclei)["aji"] == 1.0


def test_disjoint_is_zero(two_nuclei):
    other = np.zeros_like(two_nuclei)
    other[0, 6] = 1
    other[5, 0:2] = 2
    s = _scores(other, two_nuclei)
    for name in ("dice", "precision", "recall", "aji", "object_dice", "f1_50", "pq"):
        assert s[name] == 0.0, name
    # no object overlaps anything: no Hausdorff distance is defined
    assert math.isnan(s["object_hausdorff"])
    # sensitivity 0; specificity: 48 px - 16 true fg = 32 negatives, 3 predicted -> 29/32
    assert s["balanced_accuracy"] == pytest.approx(0.5 * 29 / 32)


def test_both_empty_is_perfect():
    empty = np.zeros((4, 4), np.int32)
    s = _scores(empty, empty)
    assert s["dice"] == s["aji"] == s["object_dice"] == s["f1_50"] == s["pq"] == 1.0
    assert s["object_hausdorff"] == 0.0


def test_shifted_square():
    # truth: 2x2 at cols 0-1; prediction: the same shifted right by one (cols 1-2), 4x4 image.
    # intersection 2, union 6: TP 2, FP 2, FN 2, TN 10.
    true = np.zeros((4, 4), np.int32)
    true[0:2, 0:2] = 1
    pred = np.zeros((4, 4), np.int32)
    pred[0:2, 1:3] = 1
    s = _scores(pred, true)
    assert s["dice"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # 0.5
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 10 / 12) / 2)
    assert s["aji"] == pytest.approx(2 / 6)
    assert s["object_dice"] == pytest.approx(2 * 2 / (4 + 4))  # 0.5 both ways
    assert s["object_hausdorff"] == pytest.approx(1.0)  # col 0 to col 1, col 2 to col 1
    assert s["f1_50"] == 0.0  # IoU 1/3 is no match
    assert s["pq"] == 0.0


def test_split_nucleus():
    # truth: one 2x4 nucleus (cols 0-3, 8 px) in a 2x6 image. prediction: split into
    # P1 (cols 0-1) and P2 (cols 2-3), 4 px each, plus a false P3 at col 5 (2 px).
    true = np.zeros((2, 6), np.int32)
    true[:, 0:4] = 1
    pred = np.zeros((2, 6), np.int32)
    pred[:, 0:2], pred[:, 2:4], pred[:, 5] = 1, 2, 3
    s = _scores(pred, true)
    # pixels: TP 8, FP 2, FN 0, TN 2 -> Dice 16/18
    assert s["dice"] == pytest.approx(16 / 18)
    assert s["balanced_accuracy"] == pytest.approx((1 + 2 / 4) / 2)
    # AJI: T1's best IoU is P1 or P2 (both 4/8; the lower id wins): C 4, U 8;
    # P2 and P3 are never used: U += 4 + 2 -> 4/14
    assert s["aji"] == pytest.approx(4 / 14)
    # object Dice, prediction side (area 10): P1 and P2 Dice 2*4/12 = 2/3 weight 4/10 each,
    # P3 overlaps nothing (0); truth side: T1 with P1, 2/3. -> (0.8 * 2/3 + 2/3) / 2 = 0.6
    assert s["object_dice"] == pytest.approx(0.6)
    # Hausdorff: T1's col 3 is 2 px from P1 (and col 0 is 2 px from P2); P3 is left out
    assert s["object_hausdorff"] == pytest.approx(2.0)
    # IoU exactly 0.5 is not a match (strictly greater is required)
    assert s["f1_50"] == 0.0
    assert s["n_pred"] == 3 and s["n_true"] == 1


def test_detection_pq_and_ki67():
    # T1: 4x4 square (16 px); P1: 4x3 inside it (12 px) -> IoU 0.75, a match.
    # T2: 2x2 elsewhere, unmatched (FN); P2: one pixel elsewhere (FP).
    true = np.zeros((8, 8), np.int32)
    true[0:4, 0:4] = 1
    true[6:8, 6:8] = 2
    pred = np.zeros((8, 8), np.int32)
    pred[0:4, 0:3] = 1
    pred[7, 0] = 2
    s = _scores(
        pred, true, pred_positive={1: True, 2: False}, true_positive={1: True, 2: True}
    )
    assert s["f1_50"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # 0.5
    assert s["pq"] == pytest.approx(0.5 * 0.75)
    assert s["ki67_accuracy"] == 1.0  # the one matched pair agrees
    assert s["li_pred"] == pytest.approx(50.0)
    assert s["li_true"] == pytest.approx(100.0)
    wrong = _scores(pred, true, pred_positive={1: False}, true_positive={1: True, 2: True})
    assert wrong["ki67_accuracy"] == 0.0
    assert wrong["li_pred"] == 0.0


def test_without_positivity_ki67_is_nan(two_nuclei):
    assert math.isnan(_scores(two_nuclei, two_nuclei)["ki67_accuracy"])


def test_pooled_counts_equal_the_side_by_side_image():
    rng = np.random.default_rng(0)
    pred1 = rng.integers(0, 4, (10, 10))
    true1 = rng.integers(0, 3, (10, 10))
    pred2 = rng.integers(0, 5, (10, 12))
    true2 = rng.integers(0, 4, (10, 12))
    pooled = (m.count_instances(pred1, true1) + m.count_instances(pred2, true2)).scores()
    joined = m.count_instances(
        np.hstack([pred1, np.where(pred2 > 0, pred2 + 10, 0)]),
        np.hstack([true1, np.where(true2 > 0, true2 + 10, 0)]),
    ).scores()
    for name in m.METRICS:
        if not math.isnan(joined[name]):
            assert pooled[name] == pytest.approx(joined[name]), name


def test_points():
    pred = np.zeros((10, 10), np.int32)
    pred[0:3, 0:3] = 1
    pred[5:9, 5:9] = 2
    # one point in P1, two in P2 (the second is a miss), one in background (a miss)
    points = np.array([[1, 1], [6, 6], [7, 7], [4, 0]], float)
    counts = m.count_points(
        pred,
        points,
        pred_positive={1: True, 2: True},
        point_positive=np.array([True, False, True, False]),
    )
    s = counts.scores()
    assert s["f1_50"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))
    assert math.isnan(s["dice"]) and math.isnan(s["aji"])
    # matched pairs: (P1, point 0) agree; (P2, point 1) disagree
    assert s["ki67_accuracy"] == pytest.approx(0.5)
    assert s["li_true"] == pytest.approx(50.0)


def test_convenience_functions(two_nuclei):
    shifted = np.roll(two_nuclei, 1, axis=1)
    full = _scores(shifted, two_nuclei)
    assert m.dice(shifted, two_nuclei) == full["dice"]
    assert m.aji(shifted, two_nuclei) == full["aji"]
    assert m.precision(shifted, two_nuclei) == full["precision"]
    assert m.recall(shifted, two_nuclei) == full["recall"]
    assert m.balanced_accuracy(shifted, two_nuclei) == full["balanced_accuracy"]
    assert m.object_dice(shifted, two_nuclei) == full["object_dice"]
    assert m.object_hausdorff(shifted, two_nuclei) == full["object_hausdorff"]
    assert m.detection_f1(shifted, two_nuclei) == full["f1_50"]
    assert m.panoptic_quality(shifted, two_nuclei) == full["pq"]


def test_shape_mismatch_is_refused():
    with pytest.raises(EvaluationError, match=r"same shape, got \(3, 3\) and \(3, 4\)"):
        m.dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_points_matched_one_to_one_within_a_radius():
    pred = np.zeros((40, 40), np.int32)
    pred[0:4, 0:4] = 1  # centroid (1.5, 1.5)
    pred[10:14, 10:14] = 2  # centroid (11.5, 11.5)
    pred[30:34, 30:34] = 3  # centroid (31.5, 31.5)
    # two points near object 1 (only one may match it), one 3 px from object 2, one far from all
    points = np.array([[1.5, 2.5], [2.5, 1.5], [11.5, 14.5], [25.0, 5.0]])
    counts = m.count_points(pred, points, max_distance=4.0)
    assert (counts.det_tp, counts.n_pred, counts.n_true) == (2, 3, 4)
    s = counts.scores()
    assert s["det_precision"] == pytest.approx(2 / 3) and s["det_recall"] == pytest.approx(2 / 4)
    assert s["f1_50"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    # within 2 px only object 1 matches (object 2's point is 3 px away)
    assert m.count_points(pred, points, max_distance=2.0).det_tp == 1
    # a point inside no object still matches a centroid within reach; the inside rule would miss it
    near = np.array([[15.0, 11.5]])
    assert m.count_points(pred, near, max_distance=4.0).det_tp == 1
    assert m.count_points(pred, near).det_tp == 0


def test_points_matching_keeps_ki67_pairs():
    pred = np.zeros((20, 20), np.int32)
    pred[2:6, 2:6], pred[12:16, 12:16] = 1, 2
    points = np.array([[13.5, 13.5], [3.5, 3.5]])
    counts = m.count_points(pred, points, max_distance=3.0, pred_positive={1: True, 2: False},
                            point_positive=np.array([False, True]))
    s = counts.scores()
    assert s["ki67_accuracy"] == 1.0 and s["li_pred"] == 50.0 and s["li_true"] == 50.0
