"""Configs (YAML, overrides, strictness) and the `drmm info` command."""
import subprocess
import sys
from pathlib import Path

import pytest

from drmm.cli import main
from drmm.config import Config, apply_overrides, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_roundtrip_and_overrides(tmp_path):
    cfg = load_config(ROOT / "configs/drmm_r50.yaml", ["model.num_proposals=100", "train.lr=1e-4",
                                                       "objective.stop_grad=[coord, class]"])
    assert cfg.model.num_proposals == 100 and cfg.train.lr == 1e-4
    assert cfg.objective.stop_grad == ["coord", "class"]
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_proposal: 100\n")
    with pytest.raises(ValueError, match=r"bad.yaml.model: unknown key\(s\) \['num_proposal'\]"):
        load_config(bad)
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(Config(), ["model.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(Config(), ["model.num_proposals"])
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml: invalid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_paper_configs_match_the_recipe():
    r50 = load_config(ROOT / "configs/drmm_r50.yaml")
    assert (r50.model.backbone, r50.model.num_proposals, r50.model.num_stages) == ("resnet50", 300, 6)
    assert (r50.train.lr, r50.train.weight_decay, r50.train.batch_size, r50.train.epochs) == (5e-5, 5e-5, 16, 36)
    assert r50.train.lr_steps == [27, 33] and r50.objective.beta == 0.5
    assert load_config(ROOT / "configs/drmm_r101.yaml").model.backbone == "resnet101"


def test_info_prints_parameter_count(capsys):
    assert main(["info", str(ROOT / "configs/drmm_r50.yaml")]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("parameters:"))
    total = int(line.split()[1])
    assert abs(total - 106.1e6) / 106.1e6 < 0.01
    assert "trainable:" in out and "stages: 6" in out and "proposals: 300" in out


def test_cli_reports_errors_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "drmm", "info", str(tmp_path / "none.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "none.yaml" in r.stderr and "Traceback" not in r.stderr


def test_type_checks():
    with pytest.raises(ValueError, match="model.num_proposals: expected an integer"):
        apply_overrides(Config(), ["model.num_proposals=many"])
    with pytest.raises(ValueError, match="train.lr: expected a number"):
        apply_overrides(Config(), ["train.lr=fast"])
    assert apply_overrides(Config(), ["train.lr=3"]).train.lr == 3.0
    assert apply_overrides(Config(), ["model.pretrained=null"]).model.pretrained is None
