"""Per-class NMS, winner-take-all, COCO evaluation helpers and detection drawing."""
import contextlib
import io
import math

import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import nms

from drmm.evaluation import (
    METRIC_NAMES,
    coco_evaluate,
    format_metrics_table,
    nms_per_class,
    to_coco_results,
    winner_take_all,
)
from drmm.plotting import HIGH_COLOR, LOW_COLOR, draw_detections, save_image_png


def _random_det(n=60, n_classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 30 + 5
    return {"boxes": torch.cat([xy, xy + wh], 1).to(dtype),
            "scores": torch.rand(n, generator=g).to(dtype),
            "labels": torch.randint(n_classes, (n,), generator=g),
            "meta": "passed through"}


def test_nms_per_class_matches_torchvision_nms_by_hand():
    det = _random_det()
    out = nms_per_class(det, 0.5)
    expected = torch.cat([idx[nms(det["boxes"][idx], det["scores"][idx], 0.5)]
                          for c in det["labels"].unique()
                          for idx in [torch.nonzero(det["labels"] == c).flatten()]])
    expected = expected[det["scores"][expected].argsort(descending=True)]
    assert torch.equal(out["boxes"], det["boxes"][expected])
    assert torch.equal(out["scores"], det["scores"][expected])
    assert torch.equal(out["labels"], det["labels"][expected])
    assert out["meta"] == "passed through"
    assert len(out["scores"]) < len(det["scores"])  # something was suppressed


def _det(boxes, scores, labels, dtype=torch.float32):
    return {"boxes": torch.tensor(boxes, dtype=dtype), "scores": torch.tensor(scores, dtype=dtype),
            "labels": torch.tensor(labels)}


def test_wta_sum_is_capped_at_one():
    det = _det([[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10]], [0.4, 0.4, 0.3], [2, 2, 2])
    out = winner_take_all(det, 0.5)
    assert len(out["scores"]) == 1 and out["scores"].item() == 1.0  # 1.1 capped
    assert out["labels"].tolist() == [2]


def test_wta_exact_sum_below_cap_and_other_boxes_untouched():
    det = _det([[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10],  # class 0 cluster
                [0, 0, 10, 10],  # same place, class 1: not absorbed
                [50, 50, 60, 60]],  # class 0, far away: kept as is
               [0.3, 0.2, 0.1, 0.25, 0.05], [0, 0, 0, 1, 0], dtype=torch.float64)
    out = winner_take_all(det, 0.5)
    assert out["scores"].dtype == torch.float64
    assert out["scores"].tolist() == pytest.approx([0.6, 0.25, 0.05], abs=1e-12)
    assert out["labels"].tolist() == [0, 1, 0]
    assert torch.equal(out["boxes"], det["boxes"][[0, 3, 4]])


def _iou_xyxy(a, b) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _wta_loop(boxes, scores, labels, iou_threshold):
    """Winner-take-all with plain loops: the indices kept and their new scores, best first."""
    alive = [True] * len(scores)
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if not alive[i]:
            continue
        alive[i] = False
        total = scores[i]
        for j in range(len(scores)):
            if alive[j] and labels[j] == labels[i] and _iou_xyxy(boxes[i], boxes[j]) > iou_threshold:
                alive[j] = False
                total += scores[j]
        kept.append((min(1.0, total), i))
    kept.sort(key=lambda t: -t[0])
    return [i for _, i in kept], [s for s, _ in kept]


@pytest.mark.parametrize("seed, iou", [(3, 0.5), (4, 0.3), (6, 0.6), (8, 0.7)])
def test_wta_matches_a_brute_force_loop(seed, iou):
    det = _random_det(seed=seed)
    det["component"] = torch.arange(len(det["scores"]))  # any per-detection tensor is indexed along
    idx, scores = _wta_loop(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), iou)
    out = winner_take_all(det, iou)
    assert len(idx) < len(det["scores"])  # something was merged
    assert out["component"].tolist() == idx
    assert torch.equal(out["boxes"], det["boxes"][idx]) and torch.equal(out["labels"], det["labels"][idx])
    assert out["scores"].dtype == torch.float32
    torch.testing.assert_close(out["scores"], torch.tensor(scores, dtype=torch.float32))
    assert out["meta"] == "passed through"


def test_nms_and_wta_handle_no_detections():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "labels": torch.zeros(0, dtype=torch.int64)}
    for fn in (winner_take_all, nms_per_class):
        out = fn(empty, 0.5)
        assert out["boxes"].shape == (0, 4) and len(out["scores"]) == len(out["labels"]) == 0


# ---------------------------------------------------------------- COCO evaluation

CAT_IDS = [5, 11, 42]  # non-contiguous dataset ids for contiguous labels 0, 1, 2
GT_BOXES = {1: [([10, 10, 20, 20], 5), ([50, 50, 60, 70], 11)],  # small, medium (xywh)
            2: [([0, 0, 200, 150], 42), ([300, 200, 60, 60], 5)]}  # large, medium


def _coco_gt(boxes=GT_BOXES):
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": b, "area": b[2] * b[3],
             "iscrowd": 0}
            for i, (img, b, cat) in enumerate((img, b, c) for img, bs in boxes.items()
                                              for b, c in bs)]
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": 640, "height": 480} for i in boxes],
                    "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in CAT_IDS]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _perfect_detections(boxes=GT_BOXES):
    dets = []
    for bs in boxes.values():
        xywh = torch.tensor([b for b, _ in bs], dtype=torch.float32)
        dets.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                     "scores": torch.linspace(0.9, 0.8, len(bs)),
                     "labels": torch.tensor([CAT_IDS.index(c) for _, c in bs])})
    return dets


def test_to_coco_results_format():
    res = to_coco_results(_perfect_detections(), [1, 2], CAT_IDS)
    assert len(res) == 4
    assert res[0] == {"image_id": 1, "category_id": 5, "bbox": [10.0, 10.0, 20.0, 20.0],
                      "score": pytest.approx(0.9)}
    assert [r["category_id"] for r in res] == [5, 11, 42, 5]
    assert all(isinstance(r["score"], float) for r in res)


def test_coco_evaluate_perfect_empty_and_wrong_mapping(capsys):
    gt = _coco_gt()
    perfect = coco_evaluate(gt, to_coco_results(_perfect_detections(), [1, 2], CAT_IDS))
    assert list(perfect) == list(METRIC_NAMES)
    for k in METRIC_NAMES:
        assert perfect[k] == pytest.approx(1.0), k
    assert capsys.readouterr().out == ""  # COCOeval prints silenced
    assert coco_evaluate(gt, []) == {k: 0.0 for k in METRIC_NAMES}
    shuffled = to_coco_results(_perfect_detections(), [1, 2], [11, 42, 5])
    assert coco_evaluate(gt, shuffled)["AP"] == pytest.approx(0.0)
    # Restricting to image 1 (small + medium only): no large GT -> NaN, not -1.
    only1 = coco_evaluate(gt, to_coco_results(_perfect_detections()[:1], [1], CAT_IDS),
                          image_ids=[1])
    assert only1["AP"] == pytest.approx(1.0) and math.isnan(only1["APl"])
    table = format_metrics_table(only1)
    assert all(k in table for k in METRIC_NAMES) and "100.0" in table and "nan" in table
    assert len({len(line) for line in table.splitlines()}) == 1  # aligned


# ---------------------------------------------------------------- drawing

def test_draw_detections_colours_and_png(tmp_path):
    from PIL import Image

    image = torch.rand(3, 120, 160)
    det = {"boxes": torch.tensor([[10.0, 10, 60, 60], [80, 20, 150, 100], [5, 70, 40, 110]]),
           "scores": torch.tensor([0.9, 0.4, 0.1]), "labels": torch.tensor([0, 1, 1])}
    out = draw_detections(image, det, ["person", "dog"], threshold=0.3, high=0.5)
    assert out.dtype == torch.uint8 and out.shape == (3, 120, 160)
    assert out[:, 60, 35].tolist() == list(HIGH_COLOR)  # bottom edge of the 0.9 box
    assert out[:, 100, 115].tolist() == list(LOW_COLOR)  # bottom edge of the 0.4 box
    below = (image[:, 110, 20] * 255).round().to(torch.uint8)
    assert torch.equal(out[:, 110, 20], below)  # 0.1 < threshold: not drawn
    save_image_png(out, tmp_path / "vis" / "det.png")
    with Image.open(tmp_path / "vis" / "det.png") as im:
        assert im.size == (160, 120)
    assert torch.equal(draw_detections(out, {k: v[:0] for k, v in det.items()}, None), out)
