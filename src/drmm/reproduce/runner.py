"""Running the variants: each one's config, its training and evaluation, its results row, the whole run."""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config, load_config, packaged_config
from .claims import AP_GAP, AR_TOL, judge_claims, to_float
from .report import machine_info, write_results
from .variants import DEFAULT_VARIANTS, LARGE_MAX_ITERS, VARIANTS


def variant_config(base: Config, name: str, *, seed: int | None = None, budget_minutes: float | None = None,
                   iters: int | None = None) -> Config:
    """The config of one variant: ``base`` (not modified) + the variant's overlay + the common budget.

    With ``iters`` the run is exactly that many iterations (no time limit); otherwise
    it stops after ``budget_minutes`` of training (``max_iters`` = ``LARGE_MAX_ITERS``).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if iters is None and budget_minutes is None:
        raise ValueError("give a budget: --budget-minutes M or --iters N")
    cfg = VARIANTS[name].apply(base)
    t = cfg.train
    if seed is not None:
        t.seed = seed
    if iters is not None:
        if iters < 1:
            raise ValueError(f"--iters must be >= 1, got {iters}")
        t.max_iters, t.time_limit_minutes = iters, None
    else:
        if budget_minutes <= 0:
            raise ValueError(f"--budget-minutes must be > 0, got {budget_minutes}")
        t.max_iters, t.time_limit_minutes = LARGE_MAX_ITERS, float(budget_minutes)
    t.eval_interval = 0  # trained without a val set anyway: the budget goes to training only
    return cfg


def _finished(vdir: Path) -> bool:
    """Evaluation complete (``evaluate`` writes ``nms_sweep.json`` last)."""
    return (vdir / "eval" / "metrics.json").is_file() and (vdir / "eval" / "nms_sweep.json").is_file()


def _comparable(d: dict) -> dict:
    """A config dict without what training fills in from the dataset."""
    d = copy.deepcopy(d)
    d.pop("class_names", None)
    d.get("model", {}).pop("num_classes", None)
    return d


def run_variant(cfg: Config, name: str, data_dir: Path, vdir: Path, *, device: str | None = None,
                progress: bool = True) -> None:
    """Train ``cfg`` into ``vdir/run`` (unless a finished run is there) and evaluate ``last.pt`` into ``vdir/eval``."""
    from ..data import build_dataset
    from ..evaluation import evaluate
    from ..engine.sampling import loader_workers
    from ..engine.train import DataPaths, train
    from ..checkpoints import check_class_mapping, detector_from_checkpoint

    paths = DataPaths.from_dir(data_dir)
    if paths.val_ann is None:
        raise FileNotFoundError(f"{data_dir}/annotations/val.json not found: reproduce evaluates on the val split")
    run_dir = vdir / "run"
    if not ((run_dir / "train.json").is_file() and (run_dir / "last.pt").is_file()):
        if run_dir.exists():  # an interrupted training: start it again from scratch
            shutil.rmtree(run_dir)
        result = train(cfg, DataPaths(paths.train_ann, paths.train_images), run_dir, device=device,
                       progress=progress)
        (run_dir / "train.json").write_text(json.dumps({k: v for k, v in result.items() if k != "metrics"}))
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, ckpt = detector_from_checkpoint(run_dir / "last.pt", map_location="cpu")
    val = build_dataset(cfg.data, paths.val_ann, paths.val_images, train=False, progress=progress)
    check_class_mapping(val, ckpt, model.cfg.model.num_classes, run_dir / "last.pt")
    workers = loader_workers(model.cfg.train.num_workers, dev)
    evaluate(model, val, vdir / "eval", batch_size=model.cfg.train.batch_size, device=dev, num_workers=workers,
             diagnostics=model.is_mixture, nms_sweep=True, progress=progress, title=name)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _seconds_per_iter(run_dir: Path, train_info: dict | None) -> float:
    """Training wall time per iteration (data loading included) up to the last logged iteration."""
    log = run_dir / "log.jsonl"
    if log.is_file():
        rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
        rows = [r for r in rows if r.get("type") == "train" and r.get("step")]
        if rows:
            return rows[-1]["time"] / rows[-1]["step"]
    if train_info and train_info.get("step"):
        return train_info["seconds"] / train_info["step"]
    return float("nan")


HALF_KEYS = {"ECE_half": "d_ece_before", "ECE_half_ts": "d_ece_after", "LaECE_half": "laece_before",
             "LaECE_half_ts": "laece_after"}
"""Row key -> key of ``eval/temperature_scaling.json`` (:func:`drmm.evaluation.split_half_posthoc`)."""


def temperature_scaling(vdir: Path, val_ann: Path) -> dict[str, Any]:
    """Temperature scaling of ``vdir/eval/detections.json``: fitted on half of the val images, measured on the other.

    Writes ``vdir/eval/temperature_scaling.json`` and returns it (``error`` instead
    when the detections or the annotation file are missing, or there is nothing to fit).
    """
    from ..evaluation import load_detections, load_ground_truth, split_half_posthoc, write_json

    try:
        gt = load_ground_truth(val_ann)
        result = split_half_posthoc(gt, load_detections(vdir / "eval" / "detections.json", gt), "temperature")
    except (FileNotFoundError, ValueError) as e:
        return {"error": str(e)}
    write_json(vdir / "eval" / "temperature_scaling.json", result)
    return result


def heldout(vdir: Path, val_ann: Path) -> dict[str, Any]:
    """As trained and with its best post-hoc calibrator (:func:`drmm.evaluation.heldout.heldout_calibration`).

    Writes ``vdir/eval/heldout_calibration.json`` and returns it (``error`` when the files are missing)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from ..evaluation import load_detections, load_ground_truth, write_json
    from ..evaluation.heldout import heldout_calibration

    try:
        gt = load_ground_truth(val_ann)
        dets = load_detections(vdir / "eval" / "detections.json", gt)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(val_ann))
        result = heldout_calibration(gt, dets, coco)
    except (FileNotFoundError, ValueError) as e:
        return {"error": str(e)}
    write_json(vdir / "eval" / "heldout_calibration.json", result)
    return result


def collect_variant(vdir: Path, val_ann: Path | None = None) -> dict[str, Any]:
    """One results row from a variant folder's files (see the :mod:`drmm.reproduce` doc).

    With ``val_ann`` (the val annotation file) the row also holds the split-half
    temperature scaling of the variant's detections (:func:`temperature_scaling`).
    """
    ev, run_dir = vdir / "eval", vdir / "run"
    metrics = _read_json(ev / "metrics.json") or {}
    sweep = _read_json(ev / "nms_sweep.json") or []
    diag = _read_json(ev / "diagnostics.json") or []
    train_info = _read_json(run_dir / "train.json")
    row: dict[str, Any] = {k: to_float(metrics.get(k)) for k in ("AP", "AP50", "AR100", "ECE", "LaECE")}
    if val_ann is not None:
        ts = temperature_scaling(vdir, val_ann)
        row.update({k: to_float(ts.get(v)) for k, v in HALF_KEYS.items()})
        row["temperature"] = to_float(ts.get("params", {}).get("temperature"))
        row["heldout"] = heldout(vdir, val_ann)
    for r in sweep:
        if r["method"] == "nms" and abs(r["iou"] - 0.7) < 1e-9:
            suffix = "nms0.7"
        elif r["method"] == "wta":
            suffix = "wta"
        else:
            continue
        for k in ("AP", "AR100", "ECE"):
            row[f"{k}_{suffix}"] = to_float(r[k])
    stages = [to_float(r["exp_neg_mcm"]) for r in diag]
    row["exp_neg_mcm_stages"] = stages
    row["exp_neg_mcm_last"] = stages[-1] if stages else float("nan")
    row["nll_stages"] = [to_float(r["nll"]) for r in diag]
    ckpt_step = None
    if train_info:
        ckpt_step = train_info.get("step")
        row["train_seconds"] = train_info.get("seconds")
    row["iterations"] = ckpt_step
    row["seconds_per_iter"] = _seconds_per_iter(run_dir, train_info)
    row["reliability"] = f"{vdir.name}/eval/reliability.png"
    return row


def _reuse(vdir: Path, cfg: Config) -> str | None:
    """A note when the finished run in ``vdir`` was trained with another config than ``cfg``."""
    saved = vdir / "run" / "config.yaml"
    if not saved.is_file():
        return None
    if _comparable(load_config(saved, written_by_drmm=True).to_dict()) != _comparable(cfg.to_dict()):
        return f"reused from an earlier run whose config differs from this one's; delete {vdir} to run it again"
    return None


def reproduce(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    variants: list[str] | tuple[str, ...] = DEFAULT_VARIANTS,
    seed: int | None = None,
    budget_minutes: float | None = None,
    iters: int | None = None,
    device: str | None = None,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Train and evaluate ``variants`` on ``data`` into ``out``; write and return the report.

    Finished variants in ``out`` are reused. Returns ``{"command", "machine", "budget",
    "variants": {name: row}, "failed": {name: message}, "claims": [...], ...}``.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if not variants:
        raise ValueError("no variants selected")
    if iters is not None:
        budget_minutes = None  # an exact iteration count; no time limit
    config = str(config or packaged_config("demo_cpu.yaml"))
    base = load_config(config, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    notes: dict[str, str] = {}
    for i, name in enumerate(variants, 1):
        cfg = variant_config(base, name, seed=seed, budget_minutes=budget_minutes, iters=iters)
        vdir = out / name
        if _finished(vdir):
            print(f"[{i}/{len(variants)}] {name}: finished earlier in {vdir}, reused")
            note = _reuse(vdir, cfg)
            if note:
                notes[name] = note
                print(f"  warning: {note}", file=sys.stderr)
        else:
            print(f"[{i}/{len(variants)}] {name}: {VARIANTS[name].description} ({VARIANTS[name].paper})")
            t0 = time.time()
            try:
                run_variant(cfg, name, Path(data), vdir, device=device, progress=progress)
            except RuntimeError as e:  # e.g. the non-finite-loss stop: a result, not a reason to stop the others
                failed[name] = str(e)
                print(f"  {name} failed: {e}", file=sys.stderr)
                continue
            print(f"  {name} done in {(time.time() - t0) / 60:.1f} min")
        rows[name] = collect_variant(vdir, Path(data) / "annotations" / "val.json")
    report = {
        "command": command or f"reproduce(data={str(data)!r}, out={str(out)!r}, ...)",
        "machine": machine_info(device),
        "budget": {"minutes": budget_minutes, "iters": iters},
        "base_config": config, "overrides": list(overrides or []), "data": str(data),
        "seed": base.train.seed if seed is None else seed, "lr": base.train.lr,
        "variants": rows, "failed": failed, "notes": notes,
        "claims": judge_claims(rows, failed),
        "thresholds": {"b_ap_gap": AP_GAP, "b_ar_tolerance": AR_TOL},
    }
    write_results(out, report)
    return report
