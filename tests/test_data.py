"""Tests of the data layer: synthetic generator, COCO loader and training transforms."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from helpers import run_cli, tiny_config
from torchvision import tv_tensors

from drmm.config import DataConfig, save_config
from drmm.data import (CocoDetection, UnreadableImageError, build_dataset, build_transforms, collate_fn,
                       generate_synthetic)
from drmm.data.annotations import leaves_folder


# --------------------------------------------------------------------------- synthetic


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_deterministic(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_train=6, n_val=3, seed=0, image_size=64, progress=False)
    b = generate_synthetic(tmp_path / "b", n_train=6, n_val=3, seed=0, image_size=64, progress=False)
    c = generate_synthetic(tmp_path / "c", n_train=6, n_val=3, seed=1, image_size=64, progress=False)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert len(fa) == 6 + 3 + 2 and "annotations/train.json" in fa and "val/000003.png" in fa
    assert fa == fb
    assert fa.keys() == fc.keys() and any(fa[k] != fc[k] for k in fa)


def test_synthetic_boxes_valid(tmp_path):
    s = 64
    summary = generate_synthetic(tmp_path, n_train=6, n_val=3, seed=3, image_size=s, progress=False)
    for split, n in (("train", 6), ("val", 3)):
        d = json.loads((tmp_path / "annotations" / f"{split}.json").read_text())
        assert [c["id"] for c in d["categories"]] == [1, 2, 3, 4, 5]
        assert len(d["images"]) == n == summary[split]["images"]
        assert len(d["annotations"]) == summary[split]["boxes"]
        per_image = np.bincount([a["image_id"] for a in d["annotations"]], minlength=n + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 8
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= s and y + h <= s
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0 and 1 <= a["category_id"] <= 5
        for im in d["images"]:
            with Image.open(tmp_path / split / im["file_name"]) as f:
                assert f.size == (s, s) and f.mode == "RGB"


def test_synthetic_loads_and_batches(tmp_path):
    generate_synthetic(tmp_path, n_train=4, n_val=2, image_size=64, progress=False)
    ds = CocoDetection(tmp_path / "annotations/train.json", tmp_path / "train",
                       build_transforms(DataConfig(scale=0.1), train=True))
    assert ds.class_names == ["circle", "square", "triangle", "cross", "ring"] and len(ds) == 4
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_fn)))
    assert len(images) == len(targets) == 2
    assert images[0].dtype == torch.float32 and images[0].shape[0] == 3 and 0 <= images[0].min() <= images[0].max() <= 1
    assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64


# --------------------------------------------------------------------------- COCO loader


@pytest.fixture
def coco_dir(tmp_path):
    """Seven images of every awkward kind, categories 5 / 11 / 42 and every kind of bad box."""
    d = tmp_path
    Image.new("RGB", (40, 30), (10, 20, 30)).save(d / "rgb.png")
    Image.new("L", (20, 16), 77).save(d / "gray.png")
    Image.new("RGBA", (20, 16), (200, 100, 50, 0)).save(d / "rgba.png")
    pal = Image.new("P", (20, 16), 1)
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    pal.save(d / "pal.png")
    a16 = np.full((16, 20), 257 * 100, dtype=np.uint16)
    a16[0, 0] = 65535
    Image.fromarray(a16).save(d / "img16.png")
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    stored[:, :20, 0] = 255
    stored[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(d / "exif.jpg", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (20, 16)).save(d / "empty.png")
    files = [("rgb.png", 40, 30), ("gray.png", 20, 16), ("rgba.png", 20, 16), ("pal.png", 20, 16),
             ("img16.png", 20, 16), ("exif.jpg", 20, 40), ("empty.png", 20, 16)]
    images = [{"id": 10 * (i + 1), "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(files)]
    anns = [  # (image id, category id, bbox, iscrowd)
        (10, 5, [2, 3, 10, 8], 0),  # kept: label 0
        (10, 42, [0, 0, 5, 5], 1),  # crowd
        (10, 11, [5, 5, 0, 4], 0),  # zero width
        (10, 11, [1, float("nan"), 4, 4], 0),  # NaN
        (10, 11, [30, 20, 20, 20], 0),  # partly outside: clipped to [30, 20, 40, 30]
        (10, 11, [50, 40, 5, 5], 0),  # wholly outside
        (20, 11, [1, 1, 5, 5], 0),
        (30, 42, [1, 1, 5, 5], 0),
        (40, 5, [1, 1, 5, 5], 0),
        (50, 5, [1, 1, 5, 5], 0),
        (60, 42, [2, 30, 10, 6], 0),
    ]
    coco = {
        "images": images,
        "annotations": [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "iscrowd": cr,
                         "area": 1.0} for i, (im, c, b, cr) in enumerate(anns)],
        "categories": [{"id": 42, "name": "c42"}, {"id": 5, "name": "c5"}, {"id": 11, "name": "c11"}],
    }
    (d / "ann.json").write_text(json.dumps(coco))
    return d


def test_coco_labels_cleaning_and_stats(coco_dir, caplog):
    with caplog.at_level(logging.INFO, logger="drmm.data"):
        ds = CocoDetection(coco_dir / "ann.json", coco_dir)
    assert "crowd=1" in caplog.text
    assert ds.cat_ids == [5, 11, 42] and ds.class_names == ["c5", "c11", "c42"]
    assert ds.cat_ids[2] == 42 and ds.cat_id_to_label(11) == 1
    assert ds.ids == [10, 20, 30, 40, 50, 60]  # the empty image is left out
    s = ds.stats
    assert (s["annotations"], s["crowd"], s["degenerate"], s["nonfinite"], s["clipped"], s["outside"]) == (11, 1, 1, 1, 1, 1)
    assert (s["images"], s["images_empty"], s["skipped_empty"], s["unreadable"]) == (7, 1, 1, 0)

    img, t = ds[0]
    assert img.shape == (3, 30, 40) and img.dtype == torch.float32
    assert torch.equal(t["boxes"], torch.tensor([[2.0, 3, 12, 11], [30, 20, 40, 30]]))
    assert t["labels"].tolist() == [0, 1] and t["image_id"] == 10 and t["orig_size"].tolist() == [30, 40]
    assert [ds[i][1]["labels"].tolist() for i in range(1, 5)] == [[1], [2], [0], [0]]


def test_coco_image_modes(coco_dir):
    ds = CocoDetection(coco_dir / "ann.json", coco_dir)
    gray, rgba, pal, i16, rot = (ds[i][0] for i in range(1, 6))
    assert gray.shape == (3, 16, 20) and torch.allclose(gray, torch.full_like(gray, 77 / 255))
    assert torch.allclose(rgba[:, 0, 0], torch.tensor([200, 100, 50]) / 255)
    assert torch.allclose(pal[:, 0, 0], torch.tensor([12, 34, 56]) / 255)
    assert i16.shape == (3, 16, 20) and i16[0, 0, 0] == 1.0 and torch.allclose(i16[:, 1, 1], torch.tensor(100 / 255))
    assert rot.shape == (3, 40, 20)  # stored 40 x 20, EXIF rotated to 20 wide, 40 high
    assert rot[0, :18].mean() > 0.9 and rot[2, 22:].mean() > 0.9  # red (stored left) now on top
    assert ds[5][1]["boxes"].tolist() == [[2.0, 30.0, 12.0, 36.0]]


def test_coco_skip_empty_and_eval(coco_dir):
    kw = dict(ann_file=coco_dir / "ann.json", image_dir=coco_dir)
    assert len(CocoDetection(**kw, skip_empty=False)) == 7
    ev = CocoDetection(**kw, train=False)  # evaluation keeps every image
    assert len(ev) == 7 and ev[6][1]["boxes"].shape == (0, 4) and ev[6][1]["labels"].shape == (0,)


SKIP_HINT = "pass --set data.skip_unreadable=true"


def test_coco_missing_images(coco_dir):
    coco = json.loads((coco_dir / "ann.json").read_text())
    coco["images"].append({"id": 99, "file_name": "nope.png", "width": 8, "height": 8})
    coco["annotations"].append({"id": 99, "image_id": 99, "category_id": 5, "bbox": [1, 1, 2, 2], "iscrowd": 0})
    (coco_dir / "missing.json").write_text(json.dumps(coco))
    with pytest.raises(FileNotFoundError, match="nope.png: no such file") as e:
        CocoDetection(coco_dir / "missing.json", coco_dir)
    assert SKIP_HINT in str(e.value) and "skip_unreadable=True" not in str(e.value)
    ds = CocoDetection(coco_dir / "missing.json", coco_dir, skip_unreadable=True)
    assert ds.stats["unreadable"] == 1 and ds.stats["checked"] == 7 and 99 not in ds.ids


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_header_check_finds_broken_files_before_use(coco_dir):
    """A .png of random bytes and a PNG cut after its header: one line each, at construction."""
    (coco_dir / "gray.png").write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    _truncate(coco_dir / "pal.png", 60)  # signature + IHDR chunk (33 bytes) + the start of the next one
    with pytest.raises(UnreadableImageError) as e:
        CocoDetection(coco_dir / "ann.json", coco_dir)
    msg = str(e.value)
    assert msg.startswith(f"cannot read image {coco_dir / 'gray.png'}: not an image file") and "\n" not in msg
    assert "2 of the 6 images used from" in msg and msg.endswith(f"{SKIP_HINT} to skip unreadable images)")
    ds = CocoDetection(coco_dir / "ann.json", coco_dir, skip_unreadable=True)
    assert ds.ids == [10, 30, 50, 60] and (ds.stats["checked"], ds.stats["unreadable"]) == (6, 2)
    Image.new("L", (20, 16), 77).save(coco_dir / "gray.png")  # fixed: the truncated PNG is next
    with pytest.raises(UnreadableImageError, match="pal.png: Truncated File Read .1 of the 6 images"):
        CocoDetection(coco_dir / "ann.json", coco_dir)
    assert CocoDetection(coco_dir / "ann.json", coco_dir, train=False, skip_unreadable=True).stats["checked"] == 7


@pytest.fixture
def late_failure(coco_dir):
    """exif.jpg (image 60) replaced by a JPEG cut in its pixel data: the header check passes, decoding fails."""
    noise = np.random.default_rng(0).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    Image.fromarray(noise).save(coco_dir / "exif.jpg", quality=95)
    data = (coco_dir / "exif.jpg").read_bytes()
    start_of_scan = data.index(b"\xff\xda")
    _truncate(coco_dir / "exif.jpg", start_of_scan + (len(data) - start_of_scan) // 2)
    return coco_dir


def test_decoding_failure_is_one_line_also_from_a_worker(late_failure):
    ds = CocoDetection(late_failure / "ann.json", late_failure)
    assert len(ds) == 6 and ds.stats["unreadable"] == 0
    expected = f"cannot read image {late_failure / 'exif.jpg'}: image file is truncated"
    with pytest.raises(UnreadableImageError, match="^" + re.escape(expected)):
        ds[5]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_fn)
    with pytest.raises(UnreadableImageError) as e:
        list(loader)
    msg = str(e.value)
    assert msg.startswith(expected) and msg.endswith(f"{SKIP_HINT} to skip unreadable images)")
    assert "\n" not in msg and "Traceback" not in msg and "worker" not in msg

    ds = CocoDetection(late_failure / "ann.json", late_failure, skip_unreadable=True)
    assert ds[5][1]["image_id"] == 10 and ds.stats["unreadable"] == 1  # the next readable image, wrapping round


def test_train_reports_an_undecodable_image_in_one_line(late_failure, tmp_path):
    cfg = tiny_config(min_size=64, max_size=64)
    cfg.train.batch_size, cfg.train.max_iters, cfg.train.num_workers = 3, 2, 1
    cfg.train.lr_steps, cfg.train.lr_steps_unit, cfg.train.eval_interval = [], "iter", 0
    save_config(cfg, tmp_path / "cfg.yaml")
    args = ("train", "--config", tmp_path / "cfg.yaml", "--train-ann", late_failure / "ann.json",
            "--train-images", late_failure, "--out", tmp_path / "run", "--no-progress")
    code, _, err = run_cli(*args)
    line = (f"drmm train: error: cannot read image {late_failure / 'exif.jpg'}: image file is truncated "
            f"(NN bytes not processed) (fix or remove the file, or {SKIP_HINT} to skip unreadable images)\n")
    assert code == 2 and re.fullmatch(re.escape(line).replace("NN", r"\d+"), err), err
    code, out, err = run_cli(*args, "--set", "data.skip_unreadable=true")
    assert code == 0 and err == "" and "trained 2 iterations" in out


def test_eval_takes_the_data_options(late_failure, tmp_path):
    from drmm import build_detector
    from drmm.checkpoints import atomic_save, make_checkpoint

    cfg = tiny_config(min_size=64, max_size=64)
    atomic_save(make_checkpoint(build_detector(cfg), cfg.to_dict(), ["c5", "c11", "c42"], [5, 11, 42]), tmp_path / "m.pt")
    args = ("eval", "--weights", tmp_path / "m.pt", "--ann", late_failure / "ann.json", "--images", late_failure,
            "--out", tmp_path / "ev", "--workers", 0)
    code, _, err = run_cli(*args)
    assert code == 2 and "drmm eval: error: cannot read image" in err and SKIP_HINT in err
    code, out, err = run_cli(*args, "--set", "data.skip_unreadable=true")
    assert code == 0 and "7 images of" in out
    code, _, err = run_cli(*args, "--set", "model.num_stages=1")
    assert code == 2 and err == ("drmm eval: error: --set model.num_stages=1: only data.* keys can be set here "
                                 "(the checkpoint carries the rest)\n")


def _edited(coco_dir: Path, edit) -> Path:
    """A copy of the fixture's annotation file after ``edit(dict)``."""
    d = json.loads((coco_dir / "ann.json").read_text())
    edit(d)
    (coco_dir / "edited.json").write_text(json.dumps(d))
    return coco_dir / "edited.json"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"].append({"id": 10, "file_name": "gray.png"}),
     r"images\[7\] \{'id': 10, 'file_name': 'gray.png'\} repeats the id 10 of images\[0\] .*give every image its own id"),
    (lambda d: d["annotations"].append(dict(d["annotations"][2], bbox=[1, 1, 3, 3])),
     r"annotations\[11\] .* repeats the id 3 of annotations\[2\] .*give every annotation its own id"),
    (lambda d: d["categories"].append({"id": 5, "name": "c5 again"}),
     r"categories\[3\] \{'id': 5, 'name': 'c5 again'\} repeats the id 5 of categories\[1\] .*list each category once"),
    (lambda d: d["categories"].append({"id": 6, "name": "c11"}),
     r"categories\[3\] \{'id': 6, 'name': 'c11'\} repeats the name 'c11' of categories\[2\] \{'id': 11"),
    (lambda d: d["annotations"][4].update(image_id="10"), r"annotations\[4\] has image_id '10'; ids must be integers"),
    (lambda d: d["images"][1].update(id=2.0), r"images\[1\] has id 2.0; ids must be integers"),
])
def test_duplicate_and_malformed_entries_are_errors_naming_them(coco_dir, edit, message):
    with pytest.raises(ValueError, match=r"edited.json: " + message):
        CocoDetection(_edited(coco_dir, edit), coco_dir)


def test_annotations_of_unknown_images_are_counted_and_skipped(coco_dir, caplog):
    def edit(d):
        d["annotations"].insert(3, {"id": 50, "image_id": 999, "category_id": 5, "bbox": [1, 1, 4, 4]})
        d["annotations"].append({"id": 51, "image_id": 998, "category_id": 5, "bbox": [1, 1, 4, 4]})

    with caplog.at_level(logging.WARNING, logger="drmm.data"):
        ds = CocoDetection(_edited(coco_dir, edit), coco_dir)
    assert ds.stats["unknown_image"] == 2 and ds.stats["annotations"] == 11  # the 11 of known images
    assert "skipped 2 annotation(s) of image ids not in 'images', e.g. annotations[3] (image_id 999)" in caplog.text
    assert ds.ids == [10, 20, 30, 40, 50, 60]


def test_annotation_ids_missing_are_assigned(coco_dir):
    def edit(d):
        del d["annotations"][0]["id"], d["annotations"][5]["id"]

    ds = CocoDetection(_edited(coco_dir, edit), coco_dir)
    assert ds.stats["ids_assigned"] == 2
    ids = [a["id"] for a in ds.coco.dataset["annotations"]]
    assert ids[0] == 12 and ids[5] == 13 and len(set(ids)) == 11  # after the largest id, 11


@pytest.mark.parametrize("name, outside", [
    ("a.png", False), ("sub/../a.png", False), ("./a.png", False), ("..a.png", False),
    ("../a.png", True), ("sub/../../a.png", True), ("/abs/a.png", True), ("C:\\data\\a.png", True),
    ("..\\a.png", True),
])
def test_leaves_folder(name, outside):
    assert leaves_folder(name) is outside


def test_paths_leaving_the_image_folder_are_refused_unless_allowed(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "images" / "in.png")
    Image.new("RGB", (20, 10), (0, 255, 0)).save(tmp_path / "up.png")
    Image.new("RGB", (20, 10), (0, 0, 255)).save(tmp_path / "abs.png")
    names = ["in.png", "../up.png", str(tmp_path / "abs.png")]
    coco = {"images": [{"id": i + 1, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(3)],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError) as e:
        CocoDetection(tmp_path / "ann.json", tmp_path / "images")
    assert str(e.value) == (f"{tmp_path / 'ann.json'}: images[1] has file_name '../up.png', outside the image folder "
                            f"{tmp_path / 'images'} (2 such image(s); fix the file name, or pass "
                            "--set data.allow_outside_paths=true to allow it)")
    ds = CocoDetection(tmp_path / "ann.json", tmp_path / "images", allow_outside_paths=True)
    assert ds.stats["outside_paths"] == 2 and len(ds) == 3
    assert [ds[i][0][:, 0, 0].tolist() for i in range(3)] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    cfg = DataConfig()
    cfg.allow_outside_paths = True
    assert len(build_dataset(cfg, tmp_path / "ann.json", tmp_path / "images")) == 3


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"images": []}', '{"images": [{"id": 1}], "categories": []}'])
def test_coco_bad_json(tmp_path, text):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ValueError, match="bad.json"):
        CocoDetection(tmp_path / "bad.json", tmp_path)


# --------------------------------------------------------------------------- transforms


def _sample(h: int, w: int, boxes: list[list[float]], labels: list[int]):
    image = tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8))
    for (x0, y0, x1, y1), lab in zip(boxes, labels):
        image[:, int(y0):int(y1), int(x0):int(x1)] = 50 * (lab + 1)
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes), format="XYXY", canvas_size=(h, w)),
              "labels": torch.tensor(labels), "image_id": 1, "orig_size": torch.tensor([h, w])}
    return image, target


def test_flip_coordinates():
    tf = build_transforms(DataConfig(crop=False), train=True)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        image, target = tf(*_sample(20, 30, [[2, 3, 10, 8]], [1]))
        box = tuple(target["boxes"][0].tolist())
        assert box in {(2, 3, 10, 8), (20, 3, 28, 8)}  # x -> 30 - x
        assert (image[0, 5, 25] > 0) == (box[0] == 20) and target["labels"].tolist() == [1]
        seen.add(box)
    assert len(seen) == 2
    assert isinstance(build_transforms(DataConfig(), train=False)(*_sample(20, 30, [[2, 3, 10, 8]], [1]))[1]["boxes"],
                      tv_tensors.BoundingBoxes)


def test_train_crop_keeps_boxes_inside_and_aligned():
    cfg = DataConfig(scale=0.1)  # short side to 40/50/60, crop sides in [38, 60]
    tf = build_transforms(cfg, train=True)
    boxes = [[2, 2, 30, 30], [34, 2, 62, 30], [2, 34, 30, 62], [34, 34, 62, 62]]
    cropped = 0
    for seed in range(30):
        torch.manual_seed(seed)
        image, target = tf(*_sample(64, 64, boxes, [0, 1, 2, 3]))
        h, w = image.shape[-2:]
        cropped += (h, w) != (64, 64)
        b, lab = target["boxes"], target["labels"]
        assert len(b) == len(lab) >= 1 and tuple(b.canvas_size) == (h, w)
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        for (x0, y0, x1, y1), l in zip(b.tolist(), lab.tolist()):  # box centre shows its own class colour
            if min(x1 - x0, y1 - y0) >= 4:
                assert abs(int(image[0, int((y0 + y1) / 2), int((x0 + x1) / 2)]) - 50 * (l + 1)) <= 2
    assert 5 <= cropped <= 25


def test_random_size_crop_sizes():
    from drmm.data import RandomSizeCrop

    tf = RandomSizeCrop(10, 30)
    torch.manual_seed(0)
    for _ in range(20):
        out = tf(tv_tensors.Image(torch.zeros(3, 20, 50)))
        assert 10 <= out.shape[1] <= 20 and 10 <= out.shape[2] <= 30


def test_cached_images_give_the_same_samples_and_are_never_written(tmp_path):
    """data.cache_images: every augmented sample equals the one decoded from the file, epoch after epoch;
    the cache keeps the decoded pixels of the file (the flip never writes into them)."""
    from drmm.engine.sampling import SeededSamples

    generate_synthetic(tmp_path, 6, 1, seed=0, image_size=64, progress=False)
    cfg = DataConfig(flip=True, crop=False)
    plain = build_dataset(cfg, tmp_path / "annotations/train.json", tmp_path / "train", build_transforms(cfg, True),
                          progress=False)
    cfg.cache_images = True
    cached = build_dataset(cfg, tmp_path / "annotations/train.json", tmp_path / "train", build_transforms(cfg, True),
                           progress=False)
    a, b = SeededSamples(plain, seed=1), SeededSamples(cached, seed=1)
    as_stored = build_dataset(cfg, tmp_path / "annotations/train.json", tmp_path / "train", progress=False)
    flipped = 0
    for epoch in range(3):
        for i in range(len(plain)):
            (ia, ta), (ib, tb) = a[(epoch, i)], b[(epoch, i)]
            assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
            flipped += not torch.equal(ib, as_stored[i][0])
    assert flipped > 0  # the flip ran on cached images too
    for i, pixels in cached._cache.items():
        name = cached.coco.imgs[cached.ids[i]]["file_name"]
        decoded = torch.from_numpy(np.array(Image.open(tmp_path / "train" / name).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(pixels, decoded)
    assert len(cached._cache) == len(cached)
    val = build_dataset(cfg, tmp_path / "annotations/val.json", tmp_path / "val", train=False, progress=False)
    assert val._cache is None  # evaluation reads each image once: nothing to cache
