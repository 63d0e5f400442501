"""Metrics on hand-made masks whose right answers can be worked out on paper."""
import numpy as np
import pytest

from edgecut.bench import metrics as M


def square(h=20, w=20, box=(5, 15, 5, 15), value=255):
    a = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    a[y0:y1, x0:x1] = value
    return a


def assert_perfect(pred, gt):
    """Every metric at its best value."""
    assert M.iou(pred, gt) == 1.0
    assert M.mae(pred, gt) == 0.0
    assert M.s_measure(pred, gt) == pytest.approx(1.0, abs=1e-9)
    assert M.boundary_f(pred, gt) == 1.0
    p, r = M.pr_curve(pred, gt)
    assert M.max_f(p, r) == pytest.approx(1.0)


def test_perfect_prediction():
    gt = square()
    assert_perfect(gt, gt)


def test_inverted_prediction():
    gt = square()
    inv = 255 - gt
    assert M.iou(inv, gt) == 0.0
    assert M.mae(inv, gt) == 1.0
    assert M.s_measure(inv, gt) == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_iou_mae_and_pr():
    gt = np.array([[255, 255, 0, 0]], np.uint8)
    pred = np.array([[255, 100, 200, 0]], np.uint8)
    # pred >= 128: {0, 2}; gt: {0, 1} -> 1 shared of 3
    assert M.iou(pred, gt) == pytest.approx(1 / 3)
    assert M.mae(pred, gt) == pytest.approx((0 + 155 + 200 + 0) / 255 / 4)
    p, r = M.pr_curve(pred, gt)
    t = 255 - np.arange(256)                       # index -> threshold
    i = int(np.where(t == 200)[0][0])              # >= 200: pixels 0 and 2
    assert (p[i], r[i]) == (0.5, 0.5)
    i = int(np.where(t == 100)[0][0])              # >= 100: pixels 0, 1, 2
    assert p[i] == pytest.approx(2 / 3) and r[i] == 1.0
    assert p[0] == 1.0 and r[0] == 0.5             # >= 255: pixel 0 only
    # best F: threshold 255 gives (1.3 * 1 * 0.5) / (0.3 + 0.5)
    assert M.max_f(p, r) == pytest.approx(1.3 * 0.5 / 0.8)


def test_s_measure_empty_and_full_gt():
    empty = np.zeros((8, 8), np.uint8)
    pred = np.full((8, 8), 51, np.uint8)           # 0.2 everywhere
    assert M.s_measure(pred, empty) == pytest.approx(0.8)
    assert M.s_measure(pred, np.full((8, 8), 255, np.uint8)) == pytest.approx(0.2)


def test_s_measure_orders_predictions():
    gt = square(40, 40, (10, 30, 10, 30))
    shifted = square(40, 40, (12, 32, 12, 32))
    far = square(40, 40, (0, 10, 0, 10))
    assert 1.0 > M.s_measure(shifted, gt) > M.s_measure(far, gt)


def test_boundary_f_tolerance():
    gt = square(40, 40, (10, 30, 10, 30))
    off2 = square(40, 40, (12, 32, 12, 32))        # every edge 2 px off
    assert M.boundary_f(off2, gt, tolerance=3) == 1.0
    assert M.boundary_f(off2, gt, tolerance=1) < 0.5
    assert M.boundary_f(np.zeros_like(gt), gt) == 0.0
    assert M.boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_ignore_band_is_ignored():
    gt = square(40, 40, (10, 30, 10, 30))
    gt[8:12, 8:32] = 128                           # unknown band across the top edge
    pred = square(40, 40, (10, 30, 10, 30))
    pred[8:12, 8:32] = np.arange(24, dtype=np.uint8)[None] * 10   # anything at all in the band
    assert_perfect(pred, gt)
    # ... while an error outside the band still counts
    pred[20, 20] = 0
    assert M.iou(pred, gt) < 1.0 and M.mae(pred, gt) > 0


def test_set_metrics_averages_pr_curves_not_f():
    acc = M.SetMetrics()
    gt = square()
    acc.add(gt, gt)
    acc.add(255 - gt, gt)
    s = acc.summary()
    assert s["images"] == 2
    assert s["iou"] == pytest.approx(0.5)
    assert s["mae"] == pytest.approx(0.5)
    p1, r1 = M.pr_curve(gt, gt)
    p2, r2 = M.pr_curve(255 - gt, gt)
    assert s["max_f"] == pytest.approx(M.max_f((p1 + p2) / 2, (r1 + r2) / 2))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.iou(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
