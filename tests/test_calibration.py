"""D-ECE and LaECE: matching (coco, netcal), binning, the metrics against independent brute force, figures."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import calibration_reference as ref
from drmm.evaluation import (CalibrationOptions, bin_index, bin_statistics, calibration_summary,
                             detections_from_results, expected_calibration_error, ground_truth_from_coco, match,
                             match_detections)
from drmm.plotting import calibration_curves, confidence_histograms, reliability_diagram


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


# ----------------------------------------------------------------------------- COCO files vs brute force


def _summary(ann, dets, **options):
    gt = ground_truth_from_coco(ann)
    d = detections_from_results(dets, gt)
    return gt, d, calibration_summary(gt, d, CalibrationOptions(**options))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("matching, iou, min_score", [("coco", 0.5, 0.05), ("netcal", 0.5, 0.05),
                                                      ("coco", 0.3, 0.0), ("netcal", 0.7, 0.1)])
def test_metrics_match_brute_force_on_random_coco_files(seed, matching, iou, min_score):
    ann, dets = ref.random_coco(seed)
    gt, d, s = _summary(ann, dets, iou=iou, min_score=min_score, matching=matching)
    kw = dict(iou_min=iou, matching=matching, min_score=min_score)
    m = match(gt, d, iou, matching)
    expected = ref.match(ann["annotations"], dets, iou, matching)
    assert m.correct.tolist() == [c for c, _, _ in expected] and m.ignored.tolist() == [g for _, _, g in expected]
    np.testing.assert_allclose(m.iou, [v for _, v, _ in expected], rtol=0, atol=1e-12)
    rows = ref.counted(ann["annotations"], dets, **kw)
    assert s.d_ece.n == len(rows) and int(s.counted.correct.sum()) == sum(c for _, c, _, _ in rows)
    assert s.d_ece.ece == pytest.approx(ref.d_ece(ann["annotations"], dets, 10, **kw), abs=1e-12)
    assert s.d_ece.bin_count.tolist() == ref.ece([(r[0], r[1]) for r in rows], 10)[1]
    laece, per_class = ref.laece(ann["annotations"], dets, 25, **kw)
    assert s.laece.laece == pytest.approx(laece, abs=1e-12)
    assert sorted(s.laece.per_class) == sorted(per_class) and 40 not in per_class and 50 not in per_class
    for c, v in per_class.items():
        assert s.laece.per_class[c].ece == pytest.approx(v, abs=1e-12)
        class_pairs = [(r[0], 1.0 if r[1] else 0.0) for r in rows if r[3] == c]
        assert s.per_class_d_ece[c].ece == pytest.approx(ref.ece(class_pairs, 10)[0], abs=1e-12)
    assert any(r[0] in ref.EDGES for r in rows) and (~m.correct & ~m.ignored).any()
    if matching == "coco" and seed != 1:  # crowd regions with detections inside (seed 1 has none)
        assert m.ignored.any()


def _cocoeval_outcome(ann, dets, iou):
    """Per detection (file order): (correct, ignored) as pycocotools' COCOeval decides at one IoU threshold."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ann
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.iouThrs = np.array([iou])
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.params.maxDets = [10_000]
        ev.evaluate()
    outcome = {}
    for e in ev.evalImgs:
        if e is not None:
            for k, dt_id in enumerate(e["dtIds"]):
                ignored = bool(e["dtIgnore"][0, k])  # matched to a crowd region
                outcome[dt_id] = (bool(e["dtMatches"][0, k] > 0) and not ignored, ignored)
    return [outcome[i + 1] for i in range(len(dets))]  # loadRes numbers results 1..N in file order


@pytest.mark.parametrize("seed", [0, 2, 3, 4, 5, 6])  # seed 1 has no detection in a crowd region
def test_coco_matching_is_cocoeval_matching(seed):
    """The default matching takes and ignores exactly the detections COCOeval does (crowd regions included)."""
    ann, dets = ref.random_coco(seed, crowd_rate=0.3)
    dets = [dict(d, score=min(d["score"], 0.99) + 1e-9 * i) for i, d in enumerate(dets)]  # no score ties
    gt = ground_truth_from_coco(ann)
    m = match(gt, detections_from_results(dets, gt), 0.5, "coco")
    expected = _cocoeval_outcome(ann, dets, 0.5)
    assert list(zip(m.correct.tolist(), m.ignored.tolist())) == expected
    assert any(ig for _, ig in expected) and any(c for c, _ in expected)


def _coco(anns, cats=(1, 2, 3)):
    return {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats],
            "annotations": [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "iscrowd": cr}
                            for i, (im, c, b, cr) in enumerate(anns)]}


def test_hand_made_file_crowd_duplicates_classes():
    ann = _coco([(1, 1, [0, 0, 10, 10], 0), (1, 1, [50, 50, 40, 40], 1),  # an object and a crowd region
                 (1, 2, [0, 0, 10, 10], 0), (2, 3, [0, 0, 20, 20], 0)])  # class 3: ground truth, no detection
    det = lambda im, c, b, s: {"image_id": im, "category_id": c, "bbox": b, "score": s}  # noqa: E731
    dets = [det(1, 1, [0, 0, 10, 10], 1.0),  # correct, IoU 1
            det(1, 1, [0, 0, 10, 8], 0.9),  # duplicate: wrong under coco, correct (IoU 0.8) under netcal
            det(1, 1, [60, 60, 5, 5], 0.7),  # inside the crowd region (IoU 0.016, IoF 1): ignored
            det(1, 1, [85, 85, 10, 10], 0.3),  # IoF 0.25 with the crowd region: wrong
            det(1, 2, [0, 0, 10, 5], 0.5),  # IoU 0.5 exactly: correct, on the 0.5 bin edge
            det(2, 1, [0, 0, 20, 20], 0.0)]  # below min-score
    _, d, s = _summary(ann, dets)
    assert (s.d_ece.n, s.counted.ignored, s.counted.below_min_score) == (4, 1, 1)
    assert s.counted.correct.tolist() == [True, False, False, True]
    np.testing.assert_allclose(s.counted.iou, [1.0, 0.0, 0.0, 0.5])
    # D-ECE: bins 10 (1.0, 0.9), 3 (0.3), 5 (0.5): 2/4 |0.5 - 0.95| + 1/4 |0 - 0.3| + 1/4 |1 - 0.5|
    assert s.d_ece.ece == pytest.approx(0.5 * 0.45 + 0.25 * 0.3 + 0.25 * 0.5)
    assert s.d_ece.bin_count.tolist() == [0, 0, 0, 1, 0, 1, 0, 0, 0, 2]
    # LaECE: class 1 bins 24 (1.0 -> IoU 1), 22 (0.9 -> 0), 7 (0.3 -> 0); class 2 bin 12 (0.5 -> IoU 0.5)
    assert s.laece.per_class[1].ece == pytest.approx((0 + 0.9 + 0.3) / 3) and s.laece.per_class[2].ece == 0
    assert s.laece.laece == pytest.approx(0.2) and 3 not in s.laece.per_class
    _, _, net = _summary(ann, dets, matching="netcal")
    assert net.counted.correct.tolist() == [True, True, False, False, True]  # the crowd one counts: wrong
    np.testing.assert_allclose(net.counted.iou, [1.0, 0.8, 0.0, 0.0, 0.5])


@pytest.mark.parametrize("n_bins", [1, 3, 7, 10, 25, 49])
def test_scores_on_bin_edges(n_bins):
    edges = [m / n_bins for m in range(n_bins + 1)]
    scores = np.array(edges + [np.nextafter(e, -1) for e in edges[1:]] + [0.0, 1.0])
    assert bin_index(scores, n_bins).tolist() == [ref.bin_of(s, n_bins) for s in scores.tolist()]
    assert bin_index(np.array([0.0, 1.0]), n_bins).tolist() == [0, n_bins - 1]


def test_calibration_curves_figure(tmp_path):
    ann, dets = ref.random_coco(0)
    _, _, s = _summary(ann, dets)
    calibration_curves({"precision": {"a": s.d_ece, "b": s.d_ece}, "mean IoU-accuracy": {"a": s.laece.pooled}},
                       tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")
