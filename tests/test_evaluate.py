"""`drmm eval` / `predict` / `bench`: outputs, category ids, ECE and LaECE, diagnostics, NMS sweep, a perfect model."""
import argparse
import contextlib
import io
import json
import math
from pathlib import Path

import calibration_reference as ref
import pytest
import torch
from helpers import run_cli, tiny_config
from PIL import Image
from torch import nn

from drmm import build_detector, detector_from_checkpoint
from drmm.bench import benchmark
from drmm.cli import register
from drmm.config import save_config
from drmm.data import CocoDetection, generate_synthetic
from drmm.checkpoints import atomic_save, make_checkpoint
from drmm.evaluation import METRIC_NAMES, evaluate, format_metrics_table, run_inference
from drmm.predict import predict

CAT_IDS = [5, 11, 42, 60, 99]  # non-contiguous dataset ids for the 5 synthetic classes


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="drmm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def _save_ckpt(path: Path, cat_ids) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5)
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), [f"c{c}" for c in cat_ids], cat_ids), path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shapes")
    generate_synthetic(d, 4, 6, image_size=64, progress=False)
    ann = d / "annotations" / "val.json"
    coco = json.loads(ann.read_text())
    for c in coco["categories"]:
        c["id"] = CAT_IDS[c["id"] - 1]
    for a in coco["annotations"]:
        a["category_id"] = CAT_IDS[a["category_id"] - 1]
    ann.write_text(json.dumps(coco))
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_ckpt(tmp_path_factory.mktemp("run") / "model.pt", CAT_IDS)


@pytest.fixture(scope="module")
def eval_run(data_dir, ckpt):
    """One `drmm eval --diagnostics --nms-sweep` run (default output folder), shared by the tests below."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _cli(["eval", "--weights", ckpt, "--data", data_dir, "--workers", "0", "--batch-size", "4",
                   "--diagnostics", "--nms-sweep"])
    assert rc == 0
    return ckpt.parent / "eval", out.getvalue()


def test_eval_writes_metrics_detections_and_figures(eval_run, data_dir):
    out, printed = eval_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == [*METRIC_NAMES, "ECE", "LaECE", "laece_0", "laace_0", "lrp", "lrp_thresholds"]
    assert all(v is None or 0 <= v <= 1 for k, v in metrics.items() if k != "lrp_thresholds")
    assert set(metrics["lrp_thresholds"]) <= {str(c) for c in CAT_IDS}
    table = format_metrics_table(metrics)  # what drmm demo and drmm train print: the numbers only
    assert "laece_0" in table and "lrp_thresholds" not in table and "APl" in table
    assert metrics["APl"] is None  # no large objects in 64-pixel images: null, not NaN
    assert metrics["ECE"] is not None and metrics["LaECE"] is not None
    dets = json.loads((out / "detections.json").read_text())
    assert {d["category_id"] for d in dets} <= set(CAT_IDS) and len({d["category_id"] for d in dets}) > 1
    assert {d["image_id"] for d in dets} == set(range(1, 7)) and len(dets) == 6 * 60  # 12 x 5 < 100 pairs
    assert all(len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in dets)
    for name in ("reliability.png", "reliability_laece.png", "reliability_laace_0.png", "confidence_histograms.png"):
        assert Image.open(out / name).size[0] > 100
    assert "ECE" in printed and "AP50" in printed


def test_eval_ece_is_drmm_calibration_on_its_detections(eval_run, data_dir, tmp_path):
    """`drmm eval`'s ECE and LaECE are `drmm calibration` on its detections.json, and brute force agrees."""
    out, _ = eval_run
    ann = data_dir / "annotations" / "val.json"
    code, _, err = run_cli("calibration", "--ann", ann, "--detections", out / "detections.json", "--out", tmp_path)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert metrics["ECE"] == report["d_ece"] and metrics["LaECE"] == report["laece"]  # exactly: the same code
    own = json.loads((out / "calibration.json").read_text())
    assert {k: own[k] for k in ("d_ece", "laece", "n", "per_class", "bins", "options")} == {
        k: report[k] for k in ("d_ece", "laece", "n", "per_class", "bins", "options")}
    coco, detections = json.loads(ann.read_text()), json.loads((out / "detections.json").read_text())
    assert sum(c for c, _, _ in ref.match(coco["annotations"], detections)) > 0  # the matching is exercised
    assert metrics["ECE"] == pytest.approx(ref.d_ece(coco["annotations"], detections), abs=1e-12)
    assert metrics["LaECE"] == pytest.approx(ref.laece(coco["annotations"], detections)[0], abs=1e-12)


def test_eval_diagnostics_per_stage(eval_run, data_dir):
    out, printed = eval_run
    rows = json.loads((out / "diagnostics.json").read_text())
    n_gt = len(json.loads((data_dir / "annotations" / "val.json").read_text())["annotations"])
    assert [r["stage"] for r in rows] == [1, 2]  # tiny config: 2 stages
    for r in rows:
        assert 0 < r["exp_neg_mcm"] <= 1 and 0 < r["exp_neg_mean_mcm"] <= 1
        assert math.isfinite(r["nll"]) and r["mcm"] >= 0 and r["num_gt"] == n_gt
    assert "exp(-MCM)" in printed


def test_eval_nms_sweep_rows(eval_run):
    out, printed = eval_run
    rows = json.loads((out / "nms_sweep.json").read_text())
    assert [(r["method"], r["iou"]) for r in rows] == [
        ("none", None), ("nms", 0.5), ("nms", 0.6), ("nms", 0.7), ("nms", 0.8), ("nms", 0.9), ("wta", 0.7)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert rows[0]["AP"] == metrics["AP"] and rows[0]["detections_per_image"] == 60
    assert all(0 <= r["AP"] <= 1 and 0 <= r["AR100"] <= 1 for r in rows)
    assert rows[1]["detections_per_image"] <= rows[5]["detections_per_image"] <= 60
    assert (out / "nms_sweep" / "reliability_wta0.7.png").is_file()
    assert "WTA IoU 0.7" in printed


def test_kept_class_prob_times_objectness_is_the_score(data_dir, ckpt):
    model, _ = detector_from_checkpoint(ckpt)
    ds = CocoDetection(data_dir / "annotations" / "val.json", data_dir / "val", train=False)
    dets, ids, extras = run_inference(model, ds, batch_size=4, progress=False, keep_mixture=True)
    assert ids == ds.ids and len(extras["targets"]) == 6
    for det, p, o in zip(dets, extras["class_prob"], extras["objectness"]):
        torch.testing.assert_close(p * o, det["scores"])


class _FakeModel(nn.Module):
    """Returns prepared detections, one dict per image in dataset order (no mixture head)."""

    def __init__(self, detections):
        super().__init__()
        self.detections = list(detections)

    def forward(self, images):
        return [self.detections.pop(0) for _ in images]


def test_perfect_model_has_ap_1_and_ece_0(data_dir, tmp_path):
    ds = CocoDetection(data_dir / "annotations" / "val.json", data_dir / "val", train=False)
    gts = [ds[i][1] for i in range(len(ds))]
    model = _FakeModel({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
                       for t in gts)
    m = evaluate(model, ds, tmp_path, batch_size=4, progress=False)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["ECE"] == 0.0 == m["LaECE"]
    assert json.loads((tmp_path / "metrics.json").read_text())["AP"] == pytest.approx(1.0)
    assert (tmp_path / "confidence_histograms.png").is_file()  # score-only histogram for a non-mixture head


def test_detections_on_crowd_regions_are_ignored_as_cocoeval_does(data_dir, tmp_path):
    """The bug of issue 15: a detection on a crowd region alone counted as wrong; COCOeval ignores it."""
    coco = json.loads((data_dir / "annotations" / "val.json").read_text())
    crowd = {"id": 10_000, "image_id": coco["images"][0]["id"], "category_id": CAT_IDS[0], "bbox": [0, 0, 30, 30],
             "area": 900, "iscrowd": 1}
    coco["annotations"].append(crowd)
    (tmp_path / "crowd.json").write_text(json.dumps(coco))
    ds = CocoDetection(tmp_path / "crowd.json", data_dir / "val", train=False)
    dets = []
    for i in range(len(ds)):
        t = ds[i][1]
        dets.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
    dets[0] = {"boxes": torch.cat([dets[0]["boxes"], torch.tensor([[2.0, 2.0, 12.0, 12.0]])]),  # inside the crowd
               "labels": torch.cat([dets[0]["labels"], torch.tensor([0])]),
               "scores": torch.cat([dets[0]["scores"], torch.tensor([0.9])])}
    m = evaluate(_FakeModel(dets), ds, tmp_path / "out", batch_size=4, progress=False)
    assert m["ECE"] == 0.0 and m["LaECE"] == 0.0 and m["AP"] == pytest.approx(1.0)
    report = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert report["left_out"]["ignored_crowd"] == 1


def test_eval_rejects_other_category_ids(data_dir, tmp_path):
    other = _save_ckpt(tmp_path / "other.pt", [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="category ids"):
        _cli(["eval", "--weights", other, "--data", data_dir, "--workers", "0"])
    with pytest.raises(ValueError, match="--ann"):
        _cli(["eval", "--weights", other, "--ann", data_dir / "annotations" / "val.json"])


def test_predict_files_folders_modes_and_corrupt(ckpt, data_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(data_dir / "val" / "000001.png").save(folder / "rgb.png")
    Image.new("L", (50, 40), 90).save(folder / "gray.jpg")
    Image.new("RGBA", (30, 70), (200, 10, 10, 128)).save(folder / "alpha.png")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    summary = predict(ckpt, [folder], out, threshold=0.0, progress=False)
    assert summary["images"] == 3 and summary["skipped"] == [str(folder / "broken.png")]
    for stem, (w, h) in {"rgb": (64, 64), "gray": (50, 40), "alpha": (30, 70)}.items():
        k = -(-512 // max(w, h))  # small images are drawn enlarged by an integer factor
        assert Image.open(out / f"{stem}.png").size == (w * k, h * k)
        rec = json.loads((out / f"{stem}.json").read_text())
        assert (rec["width"], rec["height"]) == (w, h) and len(rec["boxes"]) == len(rec["scores"]) > 0
        assert set(rec["labels"]) <= set(CAT_IDS) and rec["names"] == [f"c{c}" for c in rec["labels"]]
    single = predict(ckpt, [folder / "gray.jpg"], tmp_path / "one", threshold=0.99, progress=False)
    assert single["images"] == 1 and json.loads((tmp_path / "one" / "gray.json").read_text())["boxes"] == []
    with pytest.raises(RuntimeError, match="broken.png"):
        predict(ckpt, [folder / "broken.png"], tmp_path / "bad", progress=False)
    with pytest.raises(FileNotFoundError, match="nothere"):
        predict(ckpt, [tmp_path / "nothere.png"], tmp_path / "bad", progress=False)


def test_bench_fp32_bf16_and_cli(tmp_path, capsys):
    rows = benchmark(build_detector(tiny_config()), size=(48, 64), runs=2, warmup=1, print_table=False)
    assert [r["dtype"] for r in rows] == ["fp32", "bf16"]
    assert all(r["ms_per_image"] > 0 and r["images_per_s"] > 0 and r["max_memory_mib"] is None for r in rows)
    save_config(tiny_config(), tmp_path / "tiny.yaml")
    assert _cli(["bench", "--config", tmp_path / "tiny.yaml", "--size", "48x64", "--runs", "1", "--warmup", "0",
                 "--dtypes", "fp32"]) == 0
    assert "img/s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="HxW"):
        _cli(["bench", "--config", tmp_path / "tiny.yaml", "--size", "48"])


def test_nms_sweep_removes_duplicates_and_wta_merges_them(data_dir, tmp_path):
    """GT (score 1) + a shifted duplicate (IoU ~0.82, score 0.5): NMS <= 0.8 and WTA fix ECE, NMS 0.9 does not."""
    ds = CocoDetection(data_dir / "annotations" / "val.json", data_dir / "val", train=False)
    dets = []
    for i in range(len(ds)):
        t = ds[i][1]
        shift = torch.zeros_like(t["boxes"])
        shift[:, 0::2] = 0.1 * (t["boxes"][:, 2:3] - t["boxes"][:, 0:1])
        dets.append({"boxes": torch.cat([t["boxes"], t["boxes"] + shift]), "labels": t["labels"].repeat(2),
                     "scores": torch.tensor([1.0, 0.5]).repeat_interleave(len(t["labels"]))})
    m = evaluate(_FakeModel(dets), ds, None, batch_size=4, progress=False, nms_sweep=True)
    rows = {(r["method"], r["iou"]): r for r in m["nms_sweep"]}
    assert rows["none", None]["ECE"] == pytest.approx(0.25) and rows["nms", 0.9]["ECE"] == pytest.approx(0.25)
    for key in [("nms", 0.5), ("nms", 0.8), ("wta", 0.7)]:
        assert rows[key]["ECE"] == 0 and rows[key]["AP"] == pytest.approx(1.0)
        assert rows[key]["detections_per_image"] == rows["none", None]["detections_per_image"] / 2


@pytest.mark.slow
def test_bench_cli_with_compiled_decoder(tmp_path, capsys):
    """torch.compile needs a C++ toolchain and ~20 s: outside the default run."""
    save_config(tiny_config(), tmp_path / "tiny.yaml")
    assert _cli(["bench", "--config", tmp_path / "tiny.yaml", "--size", "48x64", "--runs", "1", "--warmup", "1",
                 "--dtypes", "fp32", "--compile"]) == 0
    assert "fp32" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--compile"):
        _cli(["bench", "--config", tmp_path / "tiny.yaml", "--compile", "--no-optimize"])
