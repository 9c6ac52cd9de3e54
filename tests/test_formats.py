"""Dataset layouts (issue 25): COCO, YOLO and VOC detected, loaded as COCO, checked, converted, trained on."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from helpers import run_cli, tiny_config
from PIL import Image

from drmm import DRMM
from drmm.config import DataConfig, save_config
from drmm.data import CocoDetection, DetectionDataset, UnreadableImageError, build_dataset
from drmm.data.formats import dataset_split, detect_format, resolve_split, split_format, training_splits
from drmm.engine.train import DataPaths
from drmm.checkpoints import load_checkpoint

SIZES = {"train": {"a": (64, 48), "b": (32, 32), "c": (40, 20)}, "val": {"v": (48, 48)}}
"""YOLO test images (w, h); c has no label file."""


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 60, 30)).save(path)


def _labels(root: Path, split: str, name: str, text: str) -> Path:
    path = root / "labels" / split / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def yolo_dir(tmp_path):
    root = tmp_path / "yolo"
    for split, images in SIZES.items():
        for name, size in images.items():
            _png(root / "images" / split / f"{name}.png", size)
    _labels(root, "train", "a", "0 0.5 0.5 0.25 0.5\n1 0.25 0.75 0.5 0.5\n")
    _labels(root, "train", "b", "1 0.5 0.5 1 1\n\n")
    _labels(root, "val", "v", "0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\ntrain: images/train\nval: images/val\n")
    return root


def _voc_xml(objects: list[tuple[str, int, tuple[int, int, int, int]]], size: bool = True) -> str:
    objs = "".join(f"  <object>\n    <name>{n}</name>\n    <difficult>{d}</difficult>\n    <bndbox>\n"
                   f"      <xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>\n"
                   f"    </bndbox>\n  </object>\n" for n, d, b in objects)
    size_xml = "  <size><width>40</width><height>30</height><depth>3</depth></size>\n" if size else ""
    return f"<annotation>\n  <filename>x.jpg</filename>\n{size_xml}{objs}</annotation>\n"


@pytest.fixture
def voc_dir(tmp_path):
    root = tmp_path / "voc"
    files = {"t1": [("dog", 0, (1, 1, 20, 10)), ("cat", 1, (5, 5, 30, 25))], "t2": [("bird", 0, (11, 6, 40, 30))],
             "v1": [("cat", 0, (2, 3, 12, 13))]}
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, objects in files.items():
        (root / "Annotations" / f"{name}.xml").write_text(_voc_xml(objects))
        _png(root / "JPEGImages" / f"{name}.jpg", (40, 30))
    (root / "ImageSets/Main/train.txt").write_text("t1\nt2\n")
    (root / "ImageSets/Main/val.txt").write_text("v1\n")
    return root


def _coco_dir(root: Path) -> Path:
    """A hand-made COCO set: category ids 3 and 7, float boxes, a crowd region."""
    cats = [{"id": 3, "name": "apple"}, {"id": 7, "name": "pear"}]
    splits = {"train": [("p.png", (64, 48), [(3, [1.25, 2.5, 20.125, 30.75]), (7, [30.5, 0.0, 33.5, 48.0]),
                                             (7, [10.0, 10.0, 5.0, 5.0], 1)]),
                        ("sub/q.png", (50, 30), [(3, [0.0, 0.0, 50.0, 30.0]), (7, [12.3456, 7.891, 3.21, 9.87])])],
              "val": [("r.png", (40, 40), [(7, [3.3, 4.4, 22.2, 11.1])])]}
    for split, images in splits.items():
        d = {"images": [], "annotations": [], "categories": cats}
        for i, (name, size, anns) in enumerate(images, 1):
            _png(root / split / name, size)
            d["images"].append({"id": 10 * i, "file_name": name, "width": size[0], "height": size[1]})
            for cat, box, *crowd in anns:
                d["annotations"].append({"id": len(d["annotations"]) + 1, "image_id": 10 * i, "category_id": cat,
                                         "bbox": box, "area": box[2] * box[3], "iscrowd": crowd[0] if crowd else 0})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(d))
    return root


def _boxes(ds: CocoDetection) -> dict[str, list[list[float]]]:
    return {ds.coco.imgs[ds.ids[i]]["file_name"]: ds[i][1]["boxes"].tolist() for i in range(len(ds))}


# --------------------------------------------------------------------------- detection


def test_each_layout_is_detected(tmp_path, yolo_dir, voc_dir):
    coco = _coco_dir(tmp_path / "coco")
    assert [detect_format(d) for d in (coco, yolo_dir, voc_dir)] == ["coco", "yolo", "voc"]
    assert detect_format(tmp_path / "empty") == "coco"  # nothing found: COCO, whose errors name the file
    assert training_splits(coco) == (coco / "annotations/train.json", coco / "train",
                                     coco / "annotations/val.json", coco / "val")
    assert DataPaths.from_dir(yolo_dir) == DataPaths(yolo_dir / "data.yaml", yolo_dir / "images/train",
                                                     yolo_dir / "data.yaml", yolo_dir / "images/val")
    assert DataPaths.from_dir(voc_dir, "voc").val_ann == voc_dir / "ImageSets/Main/val.txt"
    assert resolve_split(voc_dir, "test") is None
    with pytest.raises(FileNotFoundError, match="no split 'test'"):
        dataset_split(yolo_dir, "test")
    with pytest.raises(FileNotFoundError, match=r"annotations/train.json not found .*YOLO"):
        DataPaths.from_dir(tmp_path / "empty")
    assert [split_format(p) for p in ("a.json", "data.yaml", "train.txt")] == ["coco", "yolo", "voc"]
    with pytest.raises(ValueError, match=r"data.format='yaml': expected one of coco, yolo, voc"):
        split_format("a.json", "yaml")


# --------------------------------------------------------------------------- YOLO


@pytest.mark.parametrize("names", ["names: {0: cat, 1: dog}", "names: [cat, dog]\npath: ."])
def test_yolo_loads_boxes_in_pixels(yolo_dir, names):
    (yolo_dir / "data.yaml").write_text(f"{names}\ntrain: images/train\nval: images/val\n")
    ds = build_dataset(DataConfig(), yolo_dir / "data.yaml", yolo_dir / "images/train", train=False)
    assert isinstance(ds, DetectionDataset)
    assert ds.cat_ids == [0, 1] and ds.class_names == ["cat", "dog"]
    # a.png is 64 x 48: (cx, cy, w, h) = (32, 24, 16, 24) and (16, 36, 32, 24) pixels
    assert _boxes(ds) == {"a.png": [[24, 12, 40, 36], [0, 24, 32, 48]], "b.png": [[0, 0, 32, 32]], "c.png": []}
    assert ds[0][1]["labels"].tolist() == [0, 1] and ds[1][1]["labels"].tolist() == [1]
    assert ds.coco.imgs[ds.ids[0]]["width"] == 64 and ds.coco.imgs[ds.ids[0]]["height"] == 48
    assert len(build_dataset(DataConfig(), yolo_dir / "data.yaml", yolo_dir / "images/train")) == 2  # c: no objects


@pytest.mark.parametrize("line,message", [
    ("0 0.5 0.5 0.2", "expected 5 values 'class cx cy w h', got 4"),
    ("0 0.5 1.5 0.2 0.2", "outside 0..1"),
    ("2 0.5 0.5 0.2 0.2", "class 2 is not in the names of"),
    ("cat 0.5 0.5 0.2 0.2", "not numbers"),
    ("0.5 0.5 0.5 0.2 0.2", "is not a class index"),
])
def test_yolo_bad_label_lines_name_file_and_line(yolo_dir, caplog, line, message):
    path = _labels(yolo_dir, "train", "a", f"0 0.5 0.5 0.25 0.5\n{line}\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)) as e:
        build_dataset(DataConfig(), yolo_dir / "data.yaml", yolo_dir / "images/train", train=False)
    assert "--set data.skip_invalid=true" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="drmm.data"):
        ds = build_dataset(DataConfig(skip_invalid=True), yolo_dir / "data.yaml", yolo_dir / "images/train",
                           train=False)
    assert ds.stats["invalid_labels"] == 2 and _boxes(ds)["a.png"] == [[24, 12, 40, 36]]
    assert any("skipped 2 invalid label line(s)" in r.getMessage() and f"{path}:2" in r.getMessage()
               for r in caplog.records)


def test_yolo_unreadable_images_and_data_yaml_errors(yolo_dir):
    bad = yolo_dir / "images/train/z.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UnreadableImageError, match=re.escape(f"cannot read image {bad}") + ".*skip_unreadable"):
        build_dataset(DataConfig(), yolo_dir / "data.yaml", yolo_dir / "images/train", train=False)
    ds = build_dataset(DataConfig(skip_unreadable=True), yolo_dir / "data.yaml", yolo_dir / "images/train",
                       train=False)
    assert ds.stats["unreadable"] == 1 and len(ds) == 3
    bad.unlink()
    gone = yolo_dir / "images/train/gone.png"
    gone.symlink_to(yolo_dir / "nowhere.png")
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot read image {gone}: no such file")):
        build_dataset(DataConfig(), yolo_dir / "data.yaml", yolo_dir / "images/train", train=False)
    gone.unlink()
    (yolo_dir / "data.yaml").write_text("names: cat\ntrain: images/train\n")
    with pytest.raises(ValueError, match=r"data.yaml: 'names' must be a list"):
        build_dataset(DataConfig(), yolo_dir / "data.yaml", yolo_dir / "images/train")


# --------------------------------------------------------------------------- VOC


def test_voc_difficult_is_crowd_and_classes_are_sorted(voc_dir):
    train, val = (build_dataset(DataConfig(), voc_dir / f"ImageSets/Main/{s}.txt", voc_dir / "JPEGImages",
                                train=False) for s in ("train", "val"))
    for ds in (train, val):  # val's categories are the training split's
        assert ds.class_names == ["bird", "cat", "dog"] and ds.cat_ids == [1, 2, 3]
    assert _boxes(train) == {"t1.jpg": [[0, 0, 20, 10]], "t2.jpg": [[10, 5, 40, 30]]}  # xmin-1, ymin-1, xmax, ymax
    assert train[0][1]["labels"].tolist() == [2] and train.stats["crowd"] == 1
    crowd = [a for a in train.coco.dataset["annotations"] if a["iscrowd"]]
    assert [(a["category_id"], a["bbox"]) for a in crowd] == [(2, [4, 4, 26, 21])]  # kept for the evaluation
    ds = build_dataset(DataConfig(class_names=["dog", "cat", "bird"]), voc_dir / "ImageSets/Main/val.txt",
                       voc_dir / "JPEGImages", train=False)
    assert ds.class_names == ["dog", "cat", "bird"] and ds[0][1]["labels"].tolist() == [1]


def test_voc_bad_files_name_file_and_line(voc_dir, caplog):
    main = voc_dir / "ImageSets/Main"
    (voc_dir / "Annotations/t2.xml").write_text(_voc_xml([("bird", 0, (1, 1, 5, 5))], size=False))
    with pytest.raises(ValueError, match=re.escape(f"{voc_dir / 'Annotations/t2.xml'}:1: no <size>")
                       + ".*--set data.skip_invalid=true"):
        build_dataset(DataConfig(), main / "train.txt", voc_dir / "JPEGImages")
    cfg = DataConfig(class_names=["cat", "dog"])
    with pytest.raises(ValueError, match=re.escape(f"{voc_dir / 'Annotations/v1.xml'}:4: class 'cat'")
                       + ".*--set data.skip_invalid=true"):
        build_dataset(DataConfig(class_names=["dog", "bird"]), main / "val.txt", voc_dir / "JPEGImages")
    (voc_dir / "Annotations/v1.xml").write_text("<annotation>\n<size>\n</annotation>\n")
    with pytest.raises(ValueError, match=re.escape(f"{voc_dir / 'Annotations/v1.xml'}:3: not valid XML")):
        build_dataset(cfg, main / "val.txt", voc_dir / "JPEGImages")
    with caplog.at_level(logging.WARNING, logger="drmm.data"):
        ds = build_dataset(DataConfig(class_names=["cat", "bird"], skip_invalid=True), main / "train.txt",
                           voc_dir / "JPEGImages", train=False)
    assert ds.stats["invalid_files"] == 1 and ds.stats["invalid_labels"] == 1 and ds.stats["crowd"] == 1
    assert len(ds) == 1 and any("skipped 1 invalid annotation file(s) and 1 object(s)" in r.getMessage()
                                for r in caplog.records)


# --------------------------------------------------------------------------- convert-dataset


def test_convert_coco_to_yolo_and_back_keeps_boxes(tmp_path):
    src = _coco_dir(tmp_path / "coco")
    code, out, err = run_cli("convert-dataset", src, "--to", "yolo", tmp_path / "y")
    assert code == 0, err
    assert "train: 2 images, 4 boxes, 1 crowd dropped" in out
    assert (tmp_path / "y/labels/train/sub/q.txt").is_file() and (tmp_path / "y/images/train/sub/q.png").is_file()
    assert run_cli("convert-dataset", tmp_path / "y", "--to", "coco", tmp_path / "c")[0] == 0
    assert run_cli("convert-dataset", tmp_path / "y", "--to", "coco", tmp_path / "c")[0] == 2  # not empty
    for split in ("train", "val"):
        a = json.loads((src / f"annotations/{split}.json").read_text())
        b = json.loads((tmp_path / f"c/annotations/{split}.json").read_text())
        assert [c["name"] for c in b["categories"]] == ["apple", "pear"] and [c["id"] for c in b["categories"]] == [0, 1]
        names = {c["id"]: c["name"] for c in a["categories"]}
        for im_a in a["images"]:
            im_b = next(i for i in b["images"] if i["file_name"] == im_a["file_name"])
            assert (im_b["width"], im_b["height"]) == (im_a["width"], im_a["height"])
            want = sorted((names[x["category_id"]], x["bbox"]) for x in a["annotations"]
                          if x["image_id"] == im_a["id"] and not x["iscrowd"])
            got = sorted((b["categories"][x["category_id"]]["name"], x["bbox"]) for x in b["annotations"]
                         if x["image_id"] == im_b["id"])
            assert [n for n, _ in got] == [n for n, _ in want]
            size = max(im_a["width"], im_a["height"])
            for (_, bw), (_, bg) in zip(want, got):
                assert max(abs(u - v) for u, v in zip(bw, bg)) <= 1e-6 * size, (bw, bg)
    ds = build_dataset(DataConfig(), tmp_path / "c/annotations/train.json", tmp_path / "c/train", train=False)
    assert len(ds) == 2


def test_convert_voc_to_yolo_drops_difficult_objects(voc_dir, tmp_path):
    code, out, err = run_cli("convert-dataset", voc_dir, "--to", "yolo", tmp_path / "y", "--symlink")
    assert code == 0, err
    assert "train: 2 images, 2 boxes, 1 crowd dropped" in out
    assert "names:\n- bird\n- cat\n- dog\n" in (tmp_path / "y/data.yaml").read_text()
    assert (tmp_path / "y/images/train/t1.jpg").is_symlink()
    # t1.jpg is 40 x 30; the dog is (0, 0, 20, 10) in pixels, class 2; the difficult cat is left out
    assert (tmp_path / "y/labels/train/t1.txt").read_text() == "2 0.25000000 0.16666667 0.50000000 0.33333333\n"
    ds = build_dataset(DataConfig(), tmp_path / "y/data.yaml", tmp_path / "y/images/train", train=False)
    boxes = _boxes(ds)  # 8 decimals of 30 pixels: within 1e-6
    assert boxes["t1.jpg"] == [pytest.approx([0, 0, 20, 10], abs=1e-6)]
    assert boxes["t2.jpg"] == [pytest.approx([10, 5, 40, 30], abs=1e-6)]


# --------------------------------------------------------------------------- train + eval


def test_train_and_eval_on_a_yolo_set(yolo_dir, tmp_path):
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters, t.lr_steps, t.lr_steps_unit = 1e-3, 2, 2, 1, [], "iter"
    t.num_workers, t.eval_interval, t.checkpoint_interval, t.interval_unit = 0, 0, 0, "iter"
    cfg.data.scale, cfg.data.crop = 0.1, False
    save_config(cfg, tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--config", tmp_path / "cfg.yaml", "--data", yolo_dir, "--out", run,
                             "--no-progress")
    assert code == 0, err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["cat_ids"] == [0, 1] and ckpt["class_names"] == ["cat", "dog"] and ckpt["step"] == 2
    code, out, err = run_cli("eval", "--weights", run / "last.pt", "--data", yolo_dir, "--out", tmp_path / "ev",
                             "--workers", 0)
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert 0 <= metrics["AP"] <= 1 and 0 <= metrics["ECE"] <= 1
    dets = json.loads((tmp_path / "ev/detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {0, 1} and {d["image_id"] for d in dets} == {1}
    assert torch.load(run / "last.pt", weights_only=True)["config"]["data"]["format"] is None


@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_drmm_trains_and_evaluates_on_a_yolo_or_voc_set(layout, yolo_dir, voc_dir, tmp_path):
    """The Python object on the two other layouts: it takes the set's classes and gives ``drmm eval``'s metrics."""
    cfg = tiny_config(num_classes=1, min_size=64, max_size=64)
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters, t.lr_steps, t.lr_steps_unit = 1e-3, 2, 2, 1, [], "iter"
    t.num_workers, t.eval_interval, t.checkpoint_interval, t.interval_unit = 0, 0, 0, "iter"
    cfg.data.scale, cfg.data.crop = 0.1, False
    model = DRMM.from_config(cfg, class_names=["placeholder"], device="cpu")
    root = yolo_dir if layout == "yolo" else voc_dir
    result = model.train(data=root, out=tmp_path / "run", progress=False)
    assert result["step"] == 2 and result["checkpoint"].parent == tmp_path / "run"
    if layout == "yolo":  # class index i = category id i, named by data.yaml
        assert model.category_ids == [0, 1] and model.class_names == ["cat", "dog"]
    else:  # the train split's names, sorted, ids 1..C
        assert model.category_ids == [1, 2, 3] and model.class_names == ["bird", "cat", "dog"]
    metrics = model.evaluate(data=root, num_workers=0, progress=False)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ECE", "LaECE"} <= metrics.keys()
    assert 0 <= metrics["AP"] <= 1 and 0 <= metrics["AP50"] <= 1
