"""Trainer callbacks: EMA weights (update rule, exact resume, what eval loads) and early stopping."""
import json
import math

import pytest
import torch
from helpers import small_train_config, tiny_config
from torch import nn

from drmm.config import load_config
from drmm.engine.callbacks import EMA, EarlyStopping, build_callbacks
from drmm.checkpoints import atomic_save, detector_from_checkpoint, load_checkpoint, make_checkpoint
from drmm.engine.train import DataPaths, train
from drmm.models import build_detector


@pytest.fixture()
def synth(synth16):
    return synth16


small_cfg = small_train_config


def test_ema_update_matches_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9, warmup=2)
    w = model[0].weight.detach().clone()  # the expected average, by hand
    expected_w = w.clone()
    for n in (1, 2, 3):
        with torch.no_grad():
            model[0].weight.add_(1.0 * n)
            model[1].num_batches_tracked.add_(5)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-n / 2))
        expected_w = d * expected_w + (1 - d) * model[0].weight.detach()
        assert ema.updates == n
        assert torch.allclose(ema.module[0].weight, expected_w, rtol=0, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == 15  # integer buffers copied
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    state = ema.state_dict()
    other = EMA(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    other.load_state_dict({"model": model.state_dict(), **state})
    assert other.updates == 3 and torch.equal(other.module[0].weight, ema.module[0].weight)


def test_build_callbacks_follows_the_config():
    cfg = tiny_config(num_classes=2)
    assert build_callbacks(cfg, nn.Linear(1, 1)) == []  # off by default (no run folder: no run log)
    cfg.train.ema, cfg.train.patience = True, 3
    kinds = [type(c) for c in build_callbacks(cfg, nn.Linear(1, 1))]
    assert kinds == [EMA, EarlyStopping]


def test_ema_resume_is_exact(synth, tmp_path):
    """N steps straight vs N/2, then --resume, with train.ema on: same raw and averaged weights."""
    ema = dict(ema=True, ema_decay=0.9, ema_warmup=2)
    straight = train(small_cfg(max_iters=6, checkpoint_interval=3, **ema), DataPaths.from_dir(synth), tmp_path / "a",
                     progress=False)
    train(small_cfg(max_iters=3, checkpoint_interval=3, **ema), DataPaths.from_dir(synth), tmp_path / "b",
          progress=False)
    resumed_cfg = load_config(tmp_path / "b" / "config.yaml", ["train.max_iters=6"])
    resumed = train(resumed_cfg, DataPaths.from_dir(synth), tmp_path / "b", resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 6
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] == 6
    for entry in ("model", "ema"):
        for k in a[entry]:
            assert torch.equal(a[entry][k], b[entry][k]), (entry, k)
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])  # an average, not a copy


def test_checkpoint_with_ema_loads_the_averaged_weights(tmp_path):
    cfg = tiny_config(num_classes=2)
    model = build_detector(cfg)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = make_checkpoint(model, cfg.to_dict(), ["a", "b"], [1, 2], ema=ema, ema_updates=7)
    atomic_save(ckpt, tmp_path / "ema.pt")
    loaded, saved = detector_from_checkpoint(tmp_path / "ema.pt")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert saved["ema_updates"] == 7
    del ckpt["ema"]
    atomic_save(ckpt, tmp_path / "plain.pt")  # without "ema": the model's weights, as before
    loaded, _ = detector_from_checkpoint(tmp_path / "plain.pt")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_early_stopping_stops_and_says_why(synth, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = small_cfg(max_iters=6, lr=0.0, eval_interval=1, patience=1)  # lr 0: AP cannot improve
    result = train(cfg, DataPaths.from_dir(synth), out, progress=False)
    assert result["step"] == 2
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "val"] == [1, 2]
    stops = [r for r in rows if r["type"] == "stop"]
    assert len(stops) == 1 and stops[0]["step"] == 2 and "train.patience=1" in stops[0]["reason"]
    assert "early stopping" in capsys.readouterr().out
    assert (out / "best.pt").is_file() and load_checkpoint(out / "best.pt")["step"] == 1
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == 2 and last["early_stopping"]["bad"] == 1 and last["metrics"]


def test_a_resumed_early_stopped_run_stays_stopped(synth, tmp_path):
    out = tmp_path / "run"
    cfg = small_cfg(max_iters=6, lr=0.0, eval_interval=1, patience=1)
    train(cfg, DataPaths.from_dir(synth), out, progress=False)  # stops at step 2
    resumed = train(load_config(out / "config.yaml", ["train.max_iters=8"]), DataPaths.from_dir(synth), out,
                    resume=True, progress=False)
    assert resumed["step"] == 2  # no step more
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 2
    with_patience = train(load_config(out / "config.yaml", ["train.max_iters=3", "train.patience=5"]),
                          DataPaths.from_dir(synth), out, resume=True, progress=False)
    assert with_patience["step"] == 3  # more patience: it goes on
