"""Configs (YAML, overrides, strictness), the `drmm` parser (commands, flags, README) and `drmm info`."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from drmm.cli import build_parser
from drmm.config import Config, apply_overrides, load_config, packaged_config, save_config

ROOT = Path(__file__).resolve().parents[1]
FLAG = r"(?<![\w-])--[a-z][a-z-]*(?!\w)"  # a long option (not torchrun's --nproc_per_node)

# Every command and its options, written out by hand from `drmm COMMAND --help` (the CLI is public API).
COMMAND_FLAGS = {
    "info": {"--set", "--system", "--json"},
    "synth": {"--train", "--val", "--seed", "--size"},
    "train": {"--config", "--data", "--train-ann", "--train-images", "--val-ann", "--val-images", "--out", "--set",
              "--resume", "--init-from", "--device", "--no-progress"},
    "demo": {"--out", "--config", "--set"},
    "eval": {"--weights", "--data", "--split", "--ann", "--images", "--out", "--batch-size", "--device", "--workers",
             "--min-score", "--bins", "--diagnostics", "--nms-sweep", "--compile", "--set", "--calibrator",
             "--raw-scores"},
    "calibration": {"--ann", "--detections", "--names", "--out", "--iou", "--min-score", "--bins", "--laece-bins",
                    "--matching", "--fit", "--fit-ann", "--method", "--skip-invalid", "--per-class", "--save"},
    "calibrate": {"--weights", "--data", "--split", "--ann", "--images", "--method", "--target", "--per-class", "--out",
                  "--batch-size", "--device", "--workers", "--min-score", "--set"},
    "predict": {"--weights", "--onnx", "--runtime", "--precision", "--out", "--threshold", "--device", "--recursive",
                "--calibrator", "--raw-scores"},
    "export": {"--weights", "--out", "--opset", "--dynamic", "--static", "--half", "--calibrator", "--raw-scores"},
    "bench": {"--weights", "--config", "--set", "--size", "--device", "--batch", "--runs", "--warmup", "--dtypes",
              "--threads", "--compile", "--no-optimize"},
    "reproduce": {"--data", "--out", "--budget-minutes", "--iters", "--config", "--set", "--variants", "--seed",
                  "--device", "--no-progress"},
    "convert-mmdet": {"--config", "--out", "--ann"},
    "convert-dataset": {"--to", "--symlink", "--set"},
}


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


def test_packaged_config_is_a_shipped_file():
    path = Path(packaged_config("demo_cpu.yaml"))
    assert path.is_file() and path.parent.name == "configs" and path.parent.parent.name == "drmm"
    assert load_config(path).model.backbone == "tiny"


def test_info_prints_parameter_count():
    code, out, _ = run_cli("info", ROOT / "configs/drmm_r50.yaml")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("parameters:"))
    total = int(line.split()[1])
    assert abs(total - 106.1e6) / 106.1e6 < 0.01
    assert "trainable:" in out and "stages: 6" in out and "proposals: 300" in out


def test_info_system_names_what_a_bug_report_needs(monkeypatch):
    """`drmm info --system`: versions from the installed packages, the ISA torch picked, bf16 from the probe."""
    import importlib.metadata
    import json

    import torch

    import drmm.hardware

    code, out, _ = run_cli("info", "--system", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["torch"] == torch.__version__ and info["torchvision"] == importlib.metadata.version("torchvision")
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["threads"] == torch.get_num_threads() and info["cuda_devices"] == []
    first_model_line = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")),
                            None) if Path("/proc/cpuinfo").exists() else None
    if first_model_line:
        assert info["cpu"] == first_model_line.split(":", 1)[1].strip()
    monkeypatch.setattr(drmm.hardware, "native_bf16", lambda: False)
    code, out, _ = run_cli("info", "--system")
    assert code == 0 and "bf16_native: no (train.amp=bf16 runs fp32" in out
    assert f"onnxruntime: {info['onnxruntime']}" in out and "cuda_devices: none" in out
    assert run_cli("info")[0] == 2  # neither a config nor --system


def test_bench_drops_emulated_bf16_unless_named(monkeypatch, caplog):
    import torch

    import drmm.hardware
    from drmm.cli.bench import bench_dtypes

    cpu = torch.device("cpu")
    monkeypatch.setattr(drmm.hardware, "native_bf16", lambda: False)
    assert bench_dtypes(None, cpu) == ["fp32"] and "no bf16 instructions" in caplog.text
    assert bench_dtypes("fp32,bf16", cpu) == ["fp32", "bf16"] and "kept because you asked" in caplog.text
    monkeypatch.setattr(drmm.hardware, "native_bf16", lambda: True)
    assert bench_dtypes(None, cpu) == ["fp32", "bf16"]


def test_cli_reports_errors_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "drmm", "info", str(tmp_path / "none.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "none.yaml" in r.stderr and "Traceback" not in r.stderr
    code, out, err = run_cli("info", tmp_path / "none.yaml")  # in-process: one line on stderr
    assert code == 2 and out == ""
    assert err == f"drmm info: error: config file not found: {tmp_path / 'none.yaml'}\n"
    code, _, err = run_cli("info", ROOT / "configs/drmm_r50.yaml", "--set", "model.nope=1")
    assert code == 2 and err.startswith("drmm info: error: override 'model.nope=1'") and err.count("\n") == 1


def test_type_checks():
    with pytest.raises(ValueError, match="model.num_proposals: expected an integer"):
        apply_overrides(Config(), ["model.num_proposals=many"])
    with pytest.raises(ValueError, match="train.lr: expected a number"):
        apply_overrides(Config(), ["train.lr=fast"])
    assert apply_overrides(Config(), ["train.lr=3"]).train.lr == 3.0
    assert apply_overrides(Config(), ["model.pretrained=null"]).model.pretrained is None


def _usage_flags(help_text: str) -> set[str]:
    """The long options of a help text's usage block (up to the first blank line)."""
    usage = help_text.split("\n\n", 1)[0]
    return set(re.findall(FLAG, usage)) - {"--help"}


def test_parser_knows_every_command():
    commands = ("{info,synth,train,demo,eval,calibration,calibrate,predict,export,bench,reproduce,convert-mmdet,"
                "convert-dataset}")
    assert commands in build_parser().format_help()
    code, out, _ = run_cli("--help")
    assert code == 0 and commands in out
    code, _, err = run_cli()  # a command is required
    assert code == 2 and "required" in err
    code, _, err = run_cli("nope")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("command", list(COMMAND_FLAGS))
def test_each_command_help_lists_its_flags(command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and out.startswith(f"usage: drmm {command} ")
    assert _usage_flags(out) == COMMAND_FLAGS[command]


def test_flags_documented_in_readme_exist():
    """`drmm CMD ... --flag` in README code (blocks and inline) names a flag CMD knows; any --flag is known."""
    readme = (ROOT / "README.md").read_text()
    helps = {c: _usage_flags(run_cli(c, "--help")[1]) for c in COMMAND_FLAGS}
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S)
    lines = [l for b in blocks for l in b.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`(drmm [^`]+)`", readme)
    documented = {}
    for line in lines:
        m = re.match(r"(?:torchrun\b.*?-m |python3? -m )?drmm ([a-z-]+)\b(.*)", line.strip())
        if m:
            documented.setdefault(m.group(1), set()).update(re.findall(FLAG, m.group(2)))
    assert {"synth", "train", "eval", "predict", "bench", "reproduce", "info", "demo", "convert-mmdet"} <= set(documented)
    for command, flags in documented.items():
        assert flags <= helps[command], (command, flags - helps[command])
    assert documented["eval"] >= {"--weights", "--data", "--out", "--diagnostics", "--nms-sweep"}
    every = set().union(*helps.values())
    assert set(re.findall(FLAG, readme)) - {"--help"} <= every
