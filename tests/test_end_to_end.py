"""A COCO-format dataset the project has never seen: odd category ids, crowd boxes,
images without boxes -> `drmm train`, `drmm eval`, `drmm predict` keep the dataset's ids."""
import json
import shutil

import pytest
from helpers import run_cli, tiny_config

from drmm.config import save_config
from drmm.data import generate_synthetic
from drmm.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    generate_synthetic(root / "src", 10, 4, seed=1, image_size=64, progress=False)
    ids = {1: 7, 2: 13, 3: 42, 4: 99, 5: 1000}  # non-contiguous, unsorted by name
    for split in ("train", "val"):
        d = json.loads((root / "src/annotations" / f"{split}.json").read_text())
        for c in d["categories"]:
            c["id"] = ids[c["id"]]
        for a in d["annotations"]:
            a["category_id"] = ids[a["category_id"]]
        img0 = d["images"][0]["id"]
        d["annotations"].append({"id": 10**6, "image_id": img0, "category_id": 42, "bbox": [0, 0, 30, 30],
                                 "area": 900, "iscrowd": 1})  # a crowd region
        empty = d["images"][-1]["id"]
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != empty]  # an image without boxes
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(d))
        shutil.copytree(root / "src" / split, root / split)
    return root, set(ids.values())


def test_train_eval_predict_keep_dataset_ids(foreign, tmp_path):
    root, cat_ids = foreign
    cfg = tiny_config(num_classes=2, min_size=64, max_size=64)  # num_classes follows the dataset
    cfg.train.batch_size, cfg.train.max_iters, cfg.train.num_workers = 2, 3, 0
    cfg.train.lr_steps, cfg.train.lr_steps_unit, cfg.train.eval_interval = [], "iter", 0
    save_config(cfg, tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    code, out, _ = run_cli("train", "--config", tmp_path / "cfg.yaml", "--data", root, "--out", run, "--no-progress")
    assert code == 0 and "AP50" in out
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["model"]["num_classes"] == 5  # followed the dataset, not the config's 2
    assert ckpt["cat_ids"] == sorted(cat_ids)
    assert run_cli("eval", "--weights", run / "last.pt", "--data", root, "--out", tmp_path / "ev", "--workers", 0)[0] == 0
    dets = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= cat_ids
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["AP"] <= 1 and 0 <= metrics["ECE"] <= 1
    assert run_cli("predict", "--weights", run / "last.pt", root / "val", "--out", tmp_path / "pr",
                   "--threshold", 0)[0] == 0
    pred = json.loads(next((tmp_path / "pr").glob("*.json")).read_text())
    assert pred["labels"] and set(pred["labels"]) <= cat_ids
    assert len(list((tmp_path / "pr").glob("*.png"))) == 4


def test_train_cli_errors_name_the_problem(tmp_path):
    code, _, err = run_cli("train", "--config", "nope.yaml", "--data", tmp_path, "--out", tmp_path / "r")
    assert code == 2 and err == "drmm train: error: config file not found: nope.yaml\n"
    code, _, err = run_cli("train", "--out", tmp_path / "r")
    assert code == 2 and err.startswith("drmm train: error: --config is required")
    code, _, err = run_cli("train", "--config", "nope.yaml", "--train-ann", tmp_path / "a.json", "--out", tmp_path / "r")
    assert code == 2 and "nope.yaml" in err  # the config is read first
    save_config(tiny_config(), tmp_path / "cfg.yaml")
    code, _, err = run_cli("train", "--config", tmp_path / "cfg.yaml", "--train-ann", tmp_path / "a.json",
                           "--out", tmp_path / "r")
    assert code == 2 and "--train-images" in err
    code, _, err = run_cli("train", "--config", tmp_path / "cfg.yaml", "--train-ann", tmp_path / "a.json",
                           "--train-images", tmp_path, "--val-ann", tmp_path / "v.json", "--out", tmp_path / "r")
    assert code == 2 and err == "drmm train: error: --val-ann needs --val-images\n"


def test_check_class_mapping_compares_ids_or_the_class_count():
    from types import SimpleNamespace

    from drmm.checkpoints import check_class_mapping

    ds = SimpleNamespace(cat_ids=[7, 13, 42], ann_file="val.json")
    check_class_mapping(ds, {"cat_ids": [7, 13, 42]}, 3, "a.pt")
    check_class_mapping(ds, {}, 3, "a.pt")  # an old checkpoint without ids: the count must agree
    with pytest.raises(ValueError, match=r"val.json: category ids \[7, 13, 42\] differ .* a.pt .* \[1, 2, 3\]"):
        check_class_mapping(ds, {"cat_ids": [1, 2, 3]}, 3, "a.pt")
    with pytest.raises(ValueError, match="val.json has 3 categories but the model in a.pt predicts 5 classes"):
        check_class_mapping(ds, {"cat_ids": None}, 5, "a.pt")


def test_demo_runs_to_its_last_line(tmp_path, synth16):
    """`drmm demo` through evaluation, drawing and the printed metrics (a tiny recipe on data already there)."""
    shutil.copytree(synth16, tmp_path / "data")
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.batch_size, t.max_iters, t.num_workers, t.eval_interval, t.interval_unit = 2, 2, 0, 0, "iter"
    save_config(cfg, tmp_path / "tiny.yaml")
    code, out, err = run_cli("demo", "--out", tmp_path, "--config", tmp_path / "tiny.yaml")
    assert code == 0, err
    assert "D-ECE" in out and "laece_0" in out and "lrp_thresholds" not in out and "demo finished" in out
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 4
