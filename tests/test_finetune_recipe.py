"""The fine-tuning recipe (issue 24 item 7): configs/finetune.yaml fits the authors' converted R50 weights,
and train.backbone_lr_factor moves the backbone less."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config

from drmm.config import load_config, packaged_config
from drmm.convert_mmdet import released_config
from drmm.data import generate_synthetic
from drmm.engine.train import DataPaths, Trainer, param_groups
from drmm.models import build_detector


def test_finetune_yaml_fits_every_tensor_of_a_converted_release():
    ft = load_config(packaged_config("finetune.yaml"))
    conv, _ = released_config(packaged_config("drmm_r50.yaml"))  # what drmm convert-mmdet writes
    with torch.device("meta"):
        a, b = build_detector(ft).state_dict(), build_detector(conv).state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    t = ft.train
    assert t.ema and t.patience > 0 and 0 < t.backbone_lr_factor < 1 and t.lr < load_config(
        packaged_config("drmm_r50.yaml")).train.lr


def test_param_groups_put_the_backbone_apart():
    model = build_detector(tiny_config())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    (one,) = param_groups(model, 1e-3)
    assert [id(p) for p in one["params"]] == [id(p) for _, p in named]  # as before: resumable old checkpoints
    rest, backbone = param_groups(model, 1e-3, 0.1)
    assert {id(p) for p in backbone["params"]} == {id(p) for n, p in named if n.startswith("backbone.")}
    assert len(rest["params"]) + len(backbone["params"]) == len(named) and backbone["lr"] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="backbone_lr_factor"):
        param_groups(model, 1e-3, 0.0)


def test_a_small_backbone_factor_holds_the_backbone_still(tmp_path):
    root = tmp_path / "synth"
    generate_synthetic(root, 8, 2, seed=0, image_size=64, progress=False)
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters, t.num_workers, t.log_interval = 1e-3, 2, 3, 0, 0, 1
    t.eval_interval, t.checkpoint_interval, t.interval_unit, t.lr_steps_unit = 0, 0, "iter", "iter"
    t.lr_steps, t.backbone_lr_factor = [100], 1e-6
    trainer = Trainer(cfg, DataPaths.from_dir(root), tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    moved = {k: float((after[k] - before[k]).abs().max()) for k, p in trainer.model.named_parameters()
             if p.requires_grad}
    bb = max(v for k, v in moved.items() if k.startswith("backbone."))
    rest = max(v for k, v in moved.items() if not k.startswith("backbone."))
    assert rest > 1e-3 and bb < 1e-8  # AdamW steps are about lr per element: 3 x 1e-9 for the backbone
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if r["type"] == "train"][-1] == pytest.approx(1e-3)  # the log shows the main lr


def test_resume_refuses_another_backbone_lr_factor(tmp_path):
    root = tmp_path / "synth"
    generate_synthetic(root, 8, 2, seed=0, image_size=64, progress=False)
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.batch_size, t.max_iters, t.num_workers, t.eval_interval, t.interval_unit = 2, 1, 0, 0, "iter"
    Trainer(cfg, DataPaths.from_dir(root), tmp_path / "run", progress=False).fit()
    cfg.train.backbone_lr_factor = 0.1
    with pytest.raises(ValueError, match=r"train.backbone_lr_factor=1; a resumed run keeps it"):
        Trainer(cfg, DataPaths.from_dir(root), tmp_path / "run", resume=True, progress=False)
