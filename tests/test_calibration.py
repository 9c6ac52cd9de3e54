"""D-ECE: greedy matching, binning against an independent implementation, figures."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from drmm.evaluation import bin_statistics, expected_calibration_error, match_detections
from drmm.plotting import confidence_histograms, reliability_diagram


def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _tgt(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_duplicate_detection_only_higher_score_correct():
    gt = _tgt([[0, 0, 10, 10]], [1])
    # Lower-scored duplicate listed first, with a higher IoU: order must not matter.
    det = _det([[0, 0, 10, 10], [0, 0, 10, 9]], [0.6, 0.9], [1, 1])
    scores, correct = match_detections([det], [gt])
    np.testing.assert_allclose(scores, [0.6, 0.9])  # original order kept
    assert correct.tolist() == [False, True]


def test_wrong_class_is_incorrect():
    scores, correct = match_detections([_det([[0, 0, 10, 10]], [0.9], [2])],
                                       [_tgt([[0, 0, 10, 10]], [1])])
    assert correct.tolist() == [False]


@pytest.mark.parametrize("height, expected", [(4.9, False), (5.1, True)])
def test_iou_threshold(height, expected):
    # IoU with the 10x10 GT is height / 10: 0.49 vs 0.51.
    _, correct = match_detections([_det([[0, 0, 10, height]], [0.9], [0])],
                                  [_tgt([[0, 0, 10, 10]], [0])])
    assert correct.tolist() == [expected]


def test_match_takes_best_iou_free_gt_and_handles_empty_images():
    gts = _tgt([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])
    # Top det overlaps both GTs (IoU 0.67 with GT0, 1.0 with GT1) -> takes GT1,
    # leaving GT0 for the second det.
    det = _det([[2, 0, 12, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])
    empty_det = _det(np.zeros((0, 4)), [], [])
    scores, correct = match_detections(
        [det, empty_det, _det([[0, 0, 5, 5]], [0.3], [0])],
        [gts, _tgt([[0, 0, 5, 5]], [0]), _tgt(np.zeros((0, 4)), [])])
    assert correct.tolist() == [True, True, False]
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.3])


def test_hand_computed_ece_end_to_end():
    # 4 predictions at 0.95 (3 correct), 2 at 0.25 (1 correct).
    gt = _tgt([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], [0, 0, 0, 1])
    det = _det([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [100, 100, 110, 110],
                [60, 0, 70, 10], [0, 0, 10, 10]],
               [0.95, 0.95, 0.95, 0.95, 0.25, 0.25], [0, 0, 0, 0, 1, 0])
    scores, correct = match_detections([det], [gt])
    assert correct.tolist() == [True, True, True, False, True, False]
    res = expected_calibration_error(scores, correct)
    expected = 4 / 6 * abs(0.75 - 0.95) + 2 / 6 * abs(0.5 - 0.25)  # = 0.21667
    assert res.ece == pytest.approx(expected, abs=1e-6)
    assert res.n == 6 and res.bin_count.tolist() == [0, 0, 2, 0, 0, 0, 0, 0, 0, 4]
    assert res.bin_acc[9] == pytest.approx(0.75) and res.bin_conf[2] == pytest.approx(0.25)
    assert np.isnan(res.bin_acc[0]) and np.isnan(res.bin_conf[5])


def _ece_loops(scores, correct, n_bins, min_score):
    """Independent reference: pure-Python loops, bin = floor(s * n_bins)."""
    bins = [[] for _ in range(n_bins)]
    for s, c in zip(scores.tolist(), correct.tolist()):
        if s >= min_score:
            bins[min(int(math.floor(s * n_bins)), n_bins - 1)].append((s, c))
    n = sum(len(b) for b in bins)
    return sum(len(b) / n * abs(sum(c for _, c in b) / len(b) - sum(s for s, _ in b) / len(b))
               for b in bins if b)


@pytest.mark.parametrize("n_bins, min_score, seed", [(10, 0.05, 0), (15, 0.0, 1), (7, 0.3, 2)])
def test_ece_matches_independent_implementation(n_bins, min_score, seed):
    rng = np.random.default_rng(seed)
    scores = rng.random(2000) ** 2
    correct = rng.random(2000) < scores * 0.8  # miscalibrated on purpose
    res = expected_calibration_error(scores, correct, n_bins=n_bins, min_score=min_score)
    assert res.ece == pytest.approx(_ece_loops(scores, correct, n_bins, min_score), abs=1e-12)
    assert res.n == int((scores >= min_score).sum()) == res.bin_count.sum()
    assert len(res.bin_edges) == n_bins + 1 and res.bin_edges[0] == 0 and res.bin_edges[-1] == 1


def test_min_score_filtering_and_edge_cases():
    scores = np.array([0.01, 0.04, 0.5, 0.5, 1.0])
    correct = np.array([True, True, True, False, True])
    res = expected_calibration_error(scores, correct, min_score=0.05)
    assert res.n == 3 and res.min_score == 0.05
    assert res.bin_count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 1]  # 1.0 lands in the last bin
    # 0.5: conf 0.5 acc 0.5 -> 0; 1.0 correct -> 0. Unfiltered, 0.01 and 0.04 would add 2/5 * 0.975.
    assert res.ece == pytest.approx(0.0)
    assert expected_calibration_error(scores, correct, min_score=0.0).ece == pytest.approx(0.39)
    assert math.isnan(expected_calibration_error(scores, correct, min_score=2.0).ece)


def test_bin_statistics_by_hand():
    bins = bin_statistics(np.array([0.05, 0.15, 0.12, 1.0, 0.999]), np.array([1, 0, 1, 1, 0]), n_bins=10)
    np.testing.assert_allclose(bins.edges, np.arange(11) / 10)
    assert bins.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    np.testing.assert_allclose(bins.acc[[0, 1, 9]], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(bins.conf[[0, 1, 9]], [0.05, 0.135, 0.9995])
    assert np.isnan(bins.acc[2:9]).all() and np.isnan(bins.conf[2:9]).all()
    with pytest.raises(ValueError, match="differ in length"):
        bin_statistics(np.zeros(3), np.zeros(2), 10)


def _assert_png(path, min_side=200):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    p, o = rng.random(500), rng.random(500)
    correct = rng.random(500) < p * o
    res = expected_calibration_error(p * o, correct)
    reliability_diagram(res, tmp_path / "sub" / "rel.png", title_extra="test model", ap=0.423)
    reliability_diagram(expected_calibration_error([], []), tmp_path / "empty.png")
    columns = {"class probability p": p, "objectness o": o, "confidence p*o": p * o}
    confidence_histograms({name: bin_statistics(v, correct, 10) for name, v in columns.items()},
                          tmp_path / "hist.png")
    for name in ("sub/rel.png", "empty.png", "hist.png"):
        _assert_png(tmp_path / name)
