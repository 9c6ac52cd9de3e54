"""benchmarks/gpu_report.py on a hand-written quick run: figures, ratios, goals, the section replaced in place.

Every expected number below is computed by hand from the JSON written here, not taken
from the script. No GPU and no torch needed (the report reads JSON only).
"""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "benchmarks" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)

ENV = {"date": "2027-01-05T10:31:00+00:00", "hostname": "gpu-7", "command": "bash benchmarks/gpu_suite.sh quick",
       "smoke": False, "commit": "abc1234", "python": "3.12.3", "torch": "2.11.0", "torchvision": "0.26.0",
       "cuda": "12.8", "cudnn": 91000, "cuda_available": True, "cpu": "x86_64", "cpu_count": 16,
       "gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "gpu_memory": "81559 MiB"}


def inf(key, model, batch, dtype, ips, **extra):
    return {"model": model, "key": key, "variant": "optimized", "dtype": dtype, "batch": batch,
            "images_per_s": ips, "ms_per_image": 1000 / ips, "peak_mib": 900.0, **extra}


def train(objective, batch, dtype, ips, peak, finite=True):
    return {"objective": objective, "batch": batch, "dtype": dtype, "images_per_s": ips,
            "step_ms": 1000 * batch / ips, "step_ms_min": 900 * batch / ips, "step_ms_max": 1100 * batch / ips,
            "forward_ms": 10.0, "matching_ms": 0.0, "peak_allocated_gib": peak, "peak_reserved_gib": peak + 1,
            "finite": finite, "nonfinite_steps": 0 if finite else 2, "steps": 13, "last_loss": 3.5}


def write_run(folder: Path, env: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    drmm, sparse, faster = ("drmm_r50", "D-RMM R50"), ("sparse_rcnn_r50", "Sparse R-CNN R50"), \
        ("faster_rcnn", "Faster R-CNN R50-FPN")
    files = {
        "quick_env.json": env,
        "quick_tests.json": {"command": "pytest -m gpu tests/test_gpu.py", "returncode": 0, "passed": 13,
                             "failed": 0, "error": 0, "skipped": 1, "total": 14, "seconds": 61.0, "tests": []},
        "quick_inference.json": {"environment": {"device": "cuda"}, "size": [800, 1333], "rows": [
            inf(*drmm, 1, "fp32", 80.0, boxes_rel_err=1e-3, scores_rel_err=2e-3, within_tolerance=True),
            inf(*drmm, 1, "bf16", 63.0, boxes_rel_err=1e-2, scores_rel_err=5e-2, within_tolerance=True),
            inf(*drmm, 8, "fp32", 200.0),
            inf(*sparse, 1, "fp32", 100.0), inf(*sparse, 8, "fp32", 160.0),
            inf(*faster, 1, "fp32", 50.0),
            {"model": "Faster R-CNN R50-FPN", "key": "faster_rcnn", "variant": "optimized", "dtype": "fp32",
             "batch": 8, "skipped": "time budget"},
        ]},
        "quick_train.json": {"environment": {"device": "cuda"}, "size": [800, 1333], "rows": [
            train("drmm", 2, "bf16", 12.0, 6.3), train("hungarian", 2, "bf16", 10.0, 7.0),
            train("drmm", 2, "fp16", 10.5, 7.7), train("hungarian", 2, "fp16", 10.0, 7.0),
            train("drmm", 8, "bf16", 40.0, 20.0), train("hungarian", 8, "bf16", 32.0, 22.0, finite=False),
        ]},
        "quick_runs.json": {"torchrun_nccl_syncbn": {
            "returncode": 0, "wall_s": 30.0, "logged_steps": 20, "last_step": 20, "all_finite": True,
            "loss_first": 40.0, "loss_last": 30.0, "seconds_per_iter": 0.25, "data_share": 0.05,
            "peak_memory_gib": 6.5,
            "trainer_said": ["train.sync_bn: 0 BatchNorm layers synchronised across 1 processes",
                             "process group: nccl, 1 processes, this one rank 0 on cuda:0"]}},
    }
    for name, payload in files.items():
        (folder / name).write_text(json.dumps(payload))
    return folder


def cells_of(section: str, first: str) -> list[str]:
    """The cells of the one table row whose first cell is ``first``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|")]
    found = [r for r in rows if r[0] == first]
    assert len(found) == 1, (first, found)
    return found[0]


@pytest.fixture
def section(tmp_path, capsys) -> str:
    gpu_report.main([str(write_run(tmp_path / "res", ENV)), "--stdout"])
    return capsys.readouterr().out


def test_header_names_the_device_and_the_command(section):
    assert section.splitlines()[0].startswith("<!-- gpu-report:start")
    assert section.rstrip().endswith("<!-- gpu-report:end -->")
    assert "## GPU (measured on NVIDIA H100 80GB HBM3, 2027-01-05)" in section
    for text in ("driver 550.54.15", "torch 2.11.0", "CUDA 12.8", "2027-01-05 10:31:00 UTC", "`gpu-7`",
                 "`bash benchmarks/gpu_suite.sh quick`"):
        assert text in section
    assert "DRY RUN" not in section


def test_goals_met_or_missed_by_how_much(section):
    # 80 / 70 = 1.143: +14%; 80 / 22.8 = 3.509
    assert cells_of(section, "D-RMM R50 inference >= 70 images/s, batch 1, fp32")[1:] == [
        "80.0 images/s (3.51x the paper's 22.8)", "**met** (+14%)"]
    # 70 - 63 = 7.0; 63 / 70 = 0.90: -10%; 63 / 22.8 = 2.763
    assert cells_of(section, "D-RMM R50 inference >= 70 images/s, batch 1, bf16")[1:] == [
        "63.0 images/s (2.76x the paper's 22.8)", "**missed** by 7.0 images/s (-10%)"]
    # 12 / 10 = 1.20, 1.20 / 1.1 = 1.091: +9%
    assert cells_of(section, "D-RMM training >= 1.1x the Hungarian baseline's images/s, batch 2, bf16")[1:] == [
        "1.20x (12.0 vs 10.0 images/s)", "**met** (+9%)"]
    # 10.5 / 10 = 1.05, 1.1 - 1.05 = 0.05, 1.05 / 1.1 = 0.955: -5%
    assert cells_of(section, "D-RMM training >= 1.1x the Hungarian baseline's images/s, batch 2, fp16")[1:] == [
        "1.05x (10.5 vs 10.0 images/s)", "**missed** by 0.05x (-5%)"]
    # 40 / 32 = 1.25, 1.25 / 1.1 = 1.136: +14%
    assert cells_of(section, "D-RMM training >= 1.1x the Hungarian baseline's images/s, batch 8, bf16")[2] == \
        "**met** (+14%)"
    # 6.3 / 7 = 0.90, 7 - 6.3 = 0.70; 7.7 / 7 = 1.10, 7.7 - 7 = 0.70
    assert cells_of(section, "D-RMM training memory <= 7 GB, batch 2, bf16")[1:] == [
        "6.30 GiB (0.90x the paper's 7 GB)", "**met** (0.70 GiB under)"]
    assert cells_of(section, "D-RMM training memory <= 7 GB, batch 2, fp16")[1:] == [
        "7.70 GiB (1.10x the paper's 7 GB)", "**missed** by 0.70 GiB (+10%)"]
    assert cells_of(section, "training loss finite in every step (warm-up included)")[1:] == [
        "5 of 6 cells", "**missed** in 1 cells"]
    assert cells_of(section, "CUDA tests pass (`pytest -m gpu tests/test_gpu.py`)")[1:] == [
        "13 passed, 0 failed, 0 errors, 1 skipped", "**met**"]
    assert cells_of(section, "`torchrun --nproc_per_node=1`, NCCL + SyncBatchNorm, 20 iterations")[1:] == [
        "exit 0, nccl, 20 iterations, losses finite: True", "**met**"]


def test_ratios_to_the_baselines_and_the_paper(section):
    # batch 1 fp32: 80 / 100 = 0.80 (Sparse R-CNN), 80 / 50 = 1.60 (Faster R-CNN), 80 / 22.8 = 3.51 (paper)
    assert "| 1 | fp32 | 80.0 | 100.0 | 0.80x | 50.0 | 1.60x | 3.51x |" in section
    # batch 8 fp32: 200 / 160 = 1.25; Faster R-CNN skipped; no paper figure at batch 8
    rows = [line for line in section.splitlines() if line.startswith("| 8 | fp32 | 200.0 |")]
    assert rows == ["| 8 | fp32 | 200.0 | 160.0 | 1.25x | - | - | - |"]
    assert "* not measured: Faster R-CNN R50-FPN optimized fp32 batch 8: time budget" in section
    # training, batch 2 bf16: 12 / 10 = 1.20 images/s; memory 6.3 / 7.0 = 0.90 (Hungarian), 6.3 / 7 = 0.90 (paper)
    assert "| 2 | bf16 | 12.00 | 10.00 | 1.20x | 6.30 | 7.00 | 0.90x | 0.90x |" in section
    # batch 8 bf16: 40 / 32 = 1.25; memory 20 / 22 = 0.91; no paper figure at batch 8
    assert "| 8 | bf16 | 40.00 | 32.00 | 1.25x | 20.00 | 22.00 | 0.91x | - |" in section
    # every figure of the run is in the section: step 1000 * 2 / 12 = 166.7 ms, 11 of 13 steps finite
    assert "| drmm | 2 | bf16 | 12.00 | 166.7 (150-183) | 10.0 | 0.0 | 6.30 | 7.30 | 13 of 13 | 3.5 |" in section
    assert "| hungarian | 8 | bf16 | 32.00 | 250.0 (225-275) | 10.0 | 0.0 | 22.00 | 23.00 | 11 of 13 | 3.5 |" \
        in section


def test_rerun_replaces_the_section_between_the_markers(tmp_path):
    res = write_run(tmp_path / "res", ENV)
    doc = tmp_path / "doc.md"
    doc.write_text("# Benchmarks\n\nintro\n\n<!-- gpu-report:start -->\n## GPU (ready, not measured)\nold text\n"
                   "<!-- gpu-report:end -->\n\n### Running the GPU benchmarks\nkeep me\n")
    gpu_report.main([str(res), "--out", str(doc)])
    first = doc.read_text()
    gpu_report.main([str(res), "--out", str(doc)])
    text = doc.read_text()
    assert text == first
    assert text.count("<!-- gpu-report:start") == 1 and text.count("<!-- gpu-report:end -->") == 1
    assert text.count("## GPU (measured on") == 1 and "old text" not in text
    assert text.startswith("# Benchmarks\n\nintro\n\n<!-- gpu-report:start")
    assert text.endswith("<!-- gpu-report:end -->\n\n### Running the GPU benchmarks\nkeep me\n")
    fresh = tmp_path / "new.md"  # no markers yet: appended once, then replaced
    gpu_report.main([str(res), "--out", str(fresh)])
    gpu_report.main([str(res), "--out", str(fresh)])
    assert fresh.read_text().count("<!-- gpu-report:start") == 1


def test_a_cpu_dry_run_says_so_and_stays_out_of_the_docs(tmp_path, monkeypatch, capsys):
    env = {k: v for k, v in ENV.items() if k not in ("gpu", "driver", "gpu_memory")}
    res = write_run(tmp_path / "res", {**env, "smoke": True, "command": "SMOKE=1 bash benchmarks/gpu_suite.sh quick"})
    doc = tmp_path / "benchmarks.md"
    doc.write_text("<!-- gpu-report:start -->\nplaceholder\n<!-- gpu-report:end -->\n")
    monkeypatch.setattr(gpu_report, "DEFAULT_DOC", doc)
    with pytest.raises(SystemExit, match="refusing to write a CPU dry run"):
        gpu_report.main([str(res)])
    assert doc.read_text() == "<!-- gpu-report:start -->\nplaceholder\n<!-- gpu-report:end -->\n"
    gpu_report.main([str(res), "--stdout"])
    out = capsys.readouterr().out
    assert "## GPU (CPU DRY RUN, not GPU figures)" in out
    assert "**CPU DRY RUN (`SMOKE=1`): THESE ARE NOT GPU FIGURES.**" in out


def test_the_docs_have_one_report_section():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert text.count("<!-- gpu-report:start") == 1 and text.count("<!-- gpu-report:end -->") == 1
    assert text.index("<!-- gpu-report:start") < text.index("<!-- gpu-report:end -->")
