"""``drmm train --init-from`` (issue 24): a new run from another detector's weights, class outputs mapped by
class name; ``convert-mmdet`` for any class set. References are the source tensors themselves and a fresh model
built with the same seed, indexed by hand from the heads' layout (mixture: objectness row 0, then the classes;
box head: the classes only)."""
import json

import pytest
import torch
from helpers import run_cli, tiny_config
from released_reference import released_shapes, released_state
from test_convert_mmdet import SMALL, small_config

from drmm.config import save_config
from drmm.checkpoints import atomic_save, load_checkpoint, make_checkpoint
from drmm.checkpoints.init_from import init_model
from drmm.models import build_detector
from drmm.checkpoints.partial import UnplaceableError

SOURCE, TARGET = ["a", "b", "c"], ["c", "x", "a"]  # c and a shared, x new, b unused
LEADING = {"drmm": 1, "hungarian": 0}  # class outputs before the class logits (heads.py)


def seeded(cfg, seed):
    torch.manual_seed(seed)
    return build_detector(cfg)


def save_drmm(model, cfg, classes, path, **extra):
    atomic_save(make_checkpoint(model, cfg.to_dict(), classes, list(range(1, len(classes) + 1)), **extra), path)
    return path


@pytest.mark.parametrize("objective", ["drmm", "hungarian"])
def test_class_rows_are_mapped_by_name(objective, tmp_path):
    cfg = tiny_config(3)
    cfg.objective.name = objective
    source = seeded(cfg, 1)
    path = save_drmm(source, cfg, SOURCE, tmp_path / "src.pt", optimizer={"state": {}})
    target, fresh = seeded(cfg, 0), seeded(cfg, 0)  # fresh: what the target was before init_from
    init_model(target, TARGET, path, tmp_path / "run", cfg)
    src, tgt, new = source.state_dict(), target.state_dict(), fresh.state_dict()
    lead = LEADING[objective]
    cls_keys = [f"decoder.stages.{s}.head.cls_out.{k}" for s in range(2) for k in ("weight", "bias")]
    for key in cls_keys:
        assert torch.equal(tgt[key][:lead], src[key][:lead])  # objectness kept (mixture head)
        assert torch.equal(tgt[key][lead + 0], src[key][lead + 2])  # c
        assert torch.equal(tgt[key][lead + 2], src[key][lead + 0])  # a
        assert torch.equal(tgt[key][lead + 1], new[key][lead + 1])  # x: as a fresh model with the same seed
        if key.endswith("weight"):  # (the box head's biases all start at the focal prior)
            assert not torch.equal(tgt[key][lead + 1], src[key][lead + 1])  # not b's row
    assert all(torch.equal(tgt[k], src[k]) for k in src if k not in cls_keys)
    # the same features give the shared classes the source's logits, hence the same probabilities
    features = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for s in range(2):
            theirs, _ = source.decoder.stages[s].head(features)
            ours, _ = target.decoder.stages[s].head(features)
            pick_src, pick_tgt = [lead + 2, lead + 0], [lead + 0, lead + 2]  # (c, a)
            if lead:  # softmax over the shared classes; the objectness logit itself
                torch.testing.assert_close(ours[..., pick_tgt].softmax(-1), theirs[..., pick_src].softmax(-1))
                torch.testing.assert_close(ours[..., 0], theirs[..., 0])
            else:  # sigmoid per class
                torch.testing.assert_close(ours[..., pick_tgt].sigmoid(), theirs[..., pick_src].sigmoid())
    report = json.loads((tmp_path / "run" / "init_from.json").read_text())
    assert report["kind"] == "drmm" and report["weights"] == "model" and report["source"] == str(path)
    assert report["mapped_by_name"] == {"tensors": cls_keys, "class_mapping": {"c": "c", "x": None, "a": "a"}}
    assert report["initialised_fresh"]["classes"] == ["x"] and report["unused"]["classes"] == ["b"]
    assert sorted(report["loaded"]) == sorted(k for k in src if k not in cls_keys)


def test_ema_weights_are_preferred(tmp_path):
    cfg = tiny_config(3)
    model, ema = seeded(cfg, 1), seeded(cfg, 2)
    path = save_drmm(model, cfg, SOURCE, tmp_path / "src.pt", ema=ema.state_dict())
    target = seeded(cfg, 0)
    init_model(target, SOURCE, path)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in target.state_dict().items())


def test_unplaceable_tensors_are_one_error_listing_them(tmp_path):
    cfg = tiny_config(3)
    path = save_drmm(seeded(cfg, 1), cfg, SOURCE, tmp_path / "src.pt")
    deeper = tiny_config(3, num_stages=3)
    target = seeded(deeper, 0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UnplaceableError, match=r"(?s)0 unexpected, 40 missing, 0 misshapen.*"
                                               r"decoder\.stages\.2\.ffn\.0\.weight \[64, 32\].*"
                                               r"model\.num_stages=2 \(this run: 3\)"):
        init_model(target, TARGET, path, tmp_path / "run", deeper)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded
    assert not (tmp_path / "run").exists()
    hungarian = tiny_config(3)
    hungarian.objective.name = "hungarian"  # the box head: 4 box outputs instead of 8, no objectness
    with pytest.raises(UnplaceableError, match=r"(?s)0 missing, 8 misshapen.*"
                                               r"decoder\.stages\.1\.head\.reg_out\.weight \[8, 32\] -> \[4, 32\].*"
                                               r"objective\.name='drmm' \(this run: 'hungarian'\)"):
        init_model(seeded(hungarian, 0), TARGET, path, None, hungarian)


MMDET_CLASSES = ("cat", "dog", "bird")  # fc_cls rows: objectness, cat, dog, bird


@pytest.fixture(scope="module")
def custom_release(tmp_path_factory):
    """An authors'-code checkpoint (SMALL layout) trained on 3 classes, and the config file of its model."""
    root = tmp_path_factory.mktemp("custom_release")
    sd = released_state(released_shapes(**SMALL, classes=3), torch.rand(3, 64, 96))
    torch.save({"meta": {"CLASSES": MMDET_CLASSES, "mmdet_version": "2.12.0"}, "state_dict": sd,
                "optimizer": {"state": {}}}, root / "custom.pth")
    cfg = small_config()
    cfg.model.num_classes = 3
    save_config(cfg, root / "small.yaml")
    return root, sd, cfg


def check_mmdet_rows(model, fresh, sd):
    """fc_cls of the authors' file placed for the classes [bird, zebra, cat]; the rest as named in the file."""
    got, new = model.state_dict(), fresh.state_dict()
    for s in range(2):
        for kind in ("weight", "bias"):
            theirs, ours = sd[f"roi_head.bbox_head.{s}.fc_cls.{kind}"], got[f"decoder.stages.{s}.head.cls_out.{kind}"]
            assert torch.equal(ours[0], theirs[0])  # objectness
            assert torch.equal(ours[1], theirs[3]) and torch.equal(ours[3], theirs[1])  # bird, cat
            assert torch.equal(ours[2], new[f"decoder.stages.{s}.head.cls_out.{kind}"][2])  # zebra: fresh
    assert torch.equal(got["backbone.body.conv1.weight"], sd["backbone.conv1.weight"])
    assert torch.equal(got["decoder.stages.1.ffn.0.weight"], sd["roi_head.bbox_head.1.ffn.layers.0.0.weight"])
    assert torch.equal(got["proposals.features.weight"], sd["rpn_head.init_proposal_features.weight"])


def test_init_from_an_mmdet_file_and_a_convert_mmdet_output(custom_release, tmp_path):
    root, sd, cfg = custom_release
    fresh = seeded(cfg, 0)
    model = seeded(cfg, 0)
    init_model(model, ["bird", "zebra", "cat"], root / "custom.pth", tmp_path / "a", cfg)
    check_mmdet_rows(model, fresh, sd)
    report = json.loads((tmp_path / "a" / "init_from.json").read_text())
    assert report["kind"] == "mmdet" and report["unused"]["classes"] == ["dog"]
    assert report["mapped_by_name"]["class_mapping"] == {"bird": "bird", "zebra": None, "cat": "cat"}

    code, out, err = run_cli("convert-mmdet", root / "custom.pth", "--config", root / "small.yaml",
                             "--out", tmp_path / "c.pt")
    assert code == 0, err
    model = seeded(cfg, 0)
    init_model(model, ["bird", "zebra", "cat"], tmp_path / "c.pt", tmp_path / "b", cfg)
    check_mmdet_rows(model, fresh, sd)
    assert json.loads((tmp_path / "b" / "init_from.json").read_text())["kind"] == "convert-mmdet"


def test_convert_mmdet_of_custom_classes(custom_release, tmp_path):
    root, sd, _ = custom_release
    code, out, err = run_cli("convert-mmdet", root / "custom.pth", "--config", root / "small.yaml",
                             "--out", tmp_path / "a.pt")
    assert code == 0 and "classes: 3 from meta.CLASSES (cat, dog, bird), category ids 1..N" in out, err
    a = load_checkpoint(tmp_path / "a.pt")
    assert a["class_names"] == list(MMDET_CLASSES) and a["cat_ids"] == [1, 2, 3]
    assert a["config"]["model"]["num_classes"] == 3 and a["config"]["class_names"] == list(MMDET_CLASSES)
    assert torch.equal(a["model"]["decoder.stages.0.head.cls_out.weight"], sd["roi_head.bbox_head.0.fc_cls.weight"])

    def ann(path, cats):
        path.write_text(json.dumps({"images": [], "annotations": [],
                                    "categories": [{"id": i, "name": n} for n, i in cats.items()]}))
        return path

    # ids from the file; drmm's labels follow increasing ids (dog 2, bird 5, cat 7): class rows reordered
    code, out, err = run_cli("convert-mmdet", root / "custom.pth", "--config", root / "small.yaml", "--out",
                             tmp_path / "b.pt", "--ann", ann(tmp_path / "ok.json", {"bird": 5, "cat": 7, "dog": 2}))
    assert code == 0 and "category ids from" in out, err
    b = load_checkpoint(tmp_path / "b.pt")
    assert b["class_names"] == ["dog", "bird", "cat"] and b["cat_ids"] == [2, 5, 7]
    theirs, ours = sd["roi_head.bbox_head.1.fc_cls.bias"], b["model"]["decoder.stages.1.head.cls_out.bias"]
    assert ours.tolist() == [theirs[0], theirs[2], theirs[3], theirs[1]]

    code, _, err = run_cli("convert-mmdet", root / "custom.pth", "--config", root / "small.yaml", "--out",
                           tmp_path / "c.pt", "--ann", ann(tmp_path / "bad.json", {"cat": 1, "dog": 2, "horse": 3}))
    assert code == 2 and "missing from the file: 'bird'" in err and "not in the checkpoint: 'horse'" in err
    assert not (tmp_path / "c.pt").exists()


def test_resume_and_init_from_together_are_refused(tmp_path):
    for extra in (["--init-from", tmp_path / "src.pt"], ["--set", f"train.init_from={tmp_path / 'src.pt'}"]):
        code, _, err = run_cli("train", "--out", tmp_path / "run", "--resume", "--data", tmp_path, *extra)
        assert code == 2 and "--resume" in err and "--init-from" in err and "give one of them" in err


def test_train_init_from_writes_init_from_json(tmp_path):
    from drmm.data import generate_synthetic

    generate_synthetic(tmp_path / "data", 4, 0, seed=0, image_size=64, progress=False)
    source_cfg = tiny_config(3, min_size=64, max_size=64)
    source = seeded(source_cfg, 1)
    path = save_drmm(source, source_cfg, ["ring", "circle", "star"], tmp_path / "src.pt")
    cfg = tiny_config(5, min_size=64, max_size=64)
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters, t.lr_steps, t.lr_steps_unit = 0.0, 2, 2, 1, [], "iter"
    t.num_workers, t.log_interval, t.eval_interval, t.checkpoint_interval, t.interval_unit = 0, 1, 0, 0, "iter"
    save_config(cfg, tmp_path / "cfg.yaml")
    code, out, err = run_cli("train", "--config", tmp_path / "cfg.yaml", "--train-ann",
                             tmp_path / "data/annotations/train.json", "--train-images", tmp_path / "data/train",
                             "--out", tmp_path / "run", "--init-from", path, "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert "mapped by name" in out and "initialised fresh  3 classes (square, triangle, cross)" in out
    assert "unused             1 class (star)" in out
    report = json.loads((tmp_path / "run" / "init_from.json").read_text())
    assert report["mapped_by_name"]["class_mapping"] == {"circle": "circle", "square": None, "triangle": None,
                                                         "cross": None, "ring": "ring"}
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["train"]["init_from"] == str(path)
    w, src = ckpt["model"]["decoder.stages.1.head.cls_out.weight"], source.state_dict()
    ref = src["decoder.stages.1.head.cls_out.weight"]  # lr 0: the weights are those init_from placed
    assert torch.equal(w[0], ref[0]) and torch.equal(w[1], ref[2]) and torch.equal(w[5], ref[1])
    assert torch.equal(ckpt["model"]["decoder.stages.0.ffn.0.weight"], src["decoder.stages.0.ffn.0.weight"])
