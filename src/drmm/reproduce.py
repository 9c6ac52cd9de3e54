"""``drmm reproduce``: train the paper's objective variants under one budget and check its claims.

Every variant starts from one base config (default: the packaged CPU recipe
``demo_cpu.yaml``) with the user's ``--set`` overrides, then fixes only the
objective fields that define it (Tables 1-3, 7 of the paper); the data, seed,
architecture, learning rate, schedule and budget are the same for all of them. In
particular the Sparse R-CNN baseline keeps the base config's learning rate and
schedule (not the COCO recipe's 2.5e-5), so the comparison is like with like at
this scale. Nothing is tuned.

Budget: ``--budget-minutes M`` stops each training after M minutes of training time
(``train.time_limit_minutes``; ``max_iters`` set very large), so a variant whose
objective is faster does more iterations, which is part of the comparison. ``--iters
N`` trains exactly N iterations instead (no time limit): reproducible on any machine.

Each variant lives in ``OUT/<variant>/``: ``run/`` (the training run, trained
without a validation set so no time goes to intermediate evaluation) and ``eval/``
(``drmm eval`` outputs of ``run/last.pt`` on the val split, with the NMS /
winner-take-all sweep and, for mixture variants, the per-stage NLL / exp(-MCM)
diagnostics). A variant whose ``eval/metrics.json`` and ``eval/nms_sweep.json``
exist is not run again, so an interrupted reproduce continues where it stopped.
``OUT/results.md`` and ``OUT/results.json`` hold the table, the reliability
diagrams and the paper's claims a-e with "held" / "not held" (see :func:`judge_claims`).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .config import Config, load_config

# ----------------------------------------------------------------------------- variants


def _paper_objective(cfg: Config) -> Config:
    """The paper's D-RMM objective (NLL + 0.5 MCM, max component, Cauchy factor detached)."""
    o = cfg.objective
    o.name, o.beta, o.nll_mode, o.mcm_mode, o.stop_grad = "drmm", 0.5, "mixture", "max", ["coord"]
    return cfg


def _with(**objective: Any) -> Callable[[Config], Config]:
    """D-RMM with some objective fields changed (one ablation)."""

    def apply(cfg: Config) -> Config:
        cfg = _paper_objective(cfg)
        for k, v in objective.items():
            setattr(cfg.objective, k, v)
        return cfg

    return apply


def _baseline(cfg: Config) -> Config:
    """Sparse R-CNN: box head, Hungarian matching (focal + L1 + GIoU), whole-image proposals."""
    cfg.objective.name = "hungarian"
    cfg.model.proposal_init = "whole"
    return cfg


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    paper: str  # where in the paper
    paper_ap: float  # COCO val AP (%) the paper reports, R50
    apply: Callable[[Config], Config]  # edits (a copy of) the base config in place and returns it


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("drmm", "D-RMM: NLL + 0.5 MCM (max)", "Tables 1-3 (V)", 47.0, _paper_objective),
    Variant("baseline", "Sparse R-CNN: Hungarian, focal + L1 + GIoU, whole-image proposals", "Tables 1, 2 row 1",
            45.0, _baseline),
    Variant("nll_only", "NLL only (mixture), beta 0", "Table 2 row 3, Table 3 (I)", 35.6, _with(beta=0.0)),
    Variant("nll_bipartite", "NLL(B): NLL on Hungarian-matched pairs, beta 0", "Table 2 row 2", 46.3,
            _with(nll_mode="bipartite", beta=0.0)),
    Variant("nll_mcm_bipartite", "NLL + 0.5 MCM(B): matched instead of max component", "Table 2 row 4", 46.9,
            _with(mcm_mode="bipartite")),
    Variant("nll_max", "NLL only for the max component, beta 0", "Table 3 (IV)", 45.7,
            _with(nll_mode="max", beta=0.0)),
    Variant("stopgrad_none", "D-RMM, no stop-gradient in the MCM", "Table 7 row 1", 46.8, _with(stop_grad=[])),
    Variant("stopgrad_coord_class", "D-RMM, MCM stop-gradient on Cauchy and categorical", "Table 7 row 3", 46.7,
            _with(stop_grad=["coord", "class"])),
)}
DEFAULT_VARIANTS = tuple(VARIANTS)

LARGE_MAX_ITERS = 10**9
"""``max_iters`` under a time budget: the time limit ends training, never this."""


def variant_config(base: Config, name: str, *, seed: int | None = None, budget_minutes: float | None = None,
                   iters: int | None = None) -> Config:
    """The config of one variant: ``base`` (not modified) + the variant's objective + the common budget.

    With ``iters`` the run is exactly that many iterations (no time limit); otherwise
    it stops after ``budget_minutes`` of training (``max_iters`` = ``LARGE_MAX_ITERS``).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if iters is None and budget_minutes is None:
        raise ValueError("give a budget: --budget-minutes M or --iters N")
    cfg = VARIANTS[name].apply(copy.deepcopy(base))
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


# ----------------------------------------------------------------------------- running


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
    from .cli_eval import check_class_mapping
    from .data import CocoDetection
    from .evaluation import evaluate
    from .engine.train import DataPaths, train
    from .models import detector_from_checkpoint

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
    val = CocoDetection(paths.val_ann, paths.val_images, train=False)
    check_class_mapping(val, ckpt, model.cfg.model.num_classes, run_dir / "last.pt")
    evaluate(model, val, vdir / "eval", batch_size=model.cfg.train.batch_size, device=dev,
             num_workers=model.cfg.train.num_workers, diagnostics=model.is_mixture, nms_sweep=True,
             progress=progress, title=name)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(v: Any) -> float:
    """JSON value -> float (null -> NaN)."""
    return float("nan") if v is None else float(v)


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


def collect_variant(vdir: Path) -> dict[str, Any]:
    """One results row from a variant folder's files (see the module doc)."""
    ev, run_dir = vdir / "eval", vdir / "run"
    metrics = _read_json(ev / "metrics.json") or {}
    sweep = _read_json(ev / "nms_sweep.json") or []
    diag = _read_json(ev / "diagnostics.json") or []
    train_info = _read_json(run_dir / "train.json")
    row: dict[str, Any] = {k: _num(metrics.get(k)) for k in ("AP", "AP50", "AR100", "ECE")}
    for r in sweep:
        if r["method"] == "nms" and abs(r["iou"] - 0.7) < 1e-9:
            row["AP_nms0.7"], row["AR100_nms0.7"], row["ECE_nms0.7"] = _num(r["AP"]), _num(r["AR100"]), _num(r["ECE"])
        elif r["method"] == "wta":
            row["AP_wta"], row["AR100_wta"], row["ECE_wta"] = _num(r["AP"]), _num(r["AR100"]), _num(r["ECE"])
    stages = [_num(r["exp_neg_mcm"]) for r in diag]
    row["exp_neg_mcm_stages"] = stages
    row["exp_neg_mcm_last"] = stages[-1] if stages else float("nan")
    row["nll_stages"] = [_num(r["nll"]) for r in diag]
    ckpt_step = None
    if train_info:
        ckpt_step = train_info.get("step")
        row["train_seconds"] = train_info.get("seconds")
    row["iterations"] = ckpt_step
    row["seconds_per_iter"] = _seconds_per_iter(run_dir, train_info)
    row["reliability"] = f"{vdir.name}/eval/reliability.png"
    return row


# ----------------------------------------------------------------------------- claims

AP_GAP = 0.02
"""Claim (b): NLL-only AP counts as "well below" D-RMM's when lower by at least this (2 AP points)."""
AR_TOL = 0.05
"""Claim (b): AR100 counts as "similar" when within this (5 AR points)."""


def _bad(*values: float) -> bool:
    return any(v is None or not math.isfinite(v) for v in values)


def _p(v: float) -> str:
    """A 0..1 metric as percentage points."""
    return "nan" if _bad(v) else f"{100 * v:.1f}"


def judge_claims(rows: dict[str, dict[str, Any]], failed: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The paper's claims a-e on ``rows`` (variant -> row with ``AP``, ``AR100``, ``ECE``, ...), each
    ``{"id", "claim", "paper", "needs", "verdict", "numbers"}``.

    ``verdict`` is "held", "not held", "not run" (a variant it compares is missing)
    (or failed: ``failed`` names it) or "undefined" (a value it needs is NaN, e.g. ECE
    without any detection >= 0.05).
    Metrics are in 0..1; ``numbers`` shows them in percentage points (x100).
    """
    claims = []

    def add(cid: str, claim: str, paper: str, needs: tuple[str, ...], judge: Callable[..., tuple[bool, str]],
            keys: tuple[str, ...]) -> None:
        entry = {"id": cid, "claim": claim, "paper": paper, "needs": ", ".join(needs)}
        missing = [n for n in needs if n not in rows]
        if missing:
            why = ", ".join(f"{n} (failed)" if n in (failed or {}) else n for n in missing)
            entry.update(verdict="not run", numbers=f"variant(s) not run: {why}")
        else:
            values = [_num(rows[n].get(k)) for n in needs for k in keys]
            held, numbers = judge(*values)
            entry.update(verdict="undefined" if _bad(*values) else ("held" if held else "not held"), numbers=numbers)
        claims.append(entry)

    def a(ap_d, ap_b):
        return ap_d >= ap_b, f"AP D-RMM {_p(ap_d)} vs baseline {_p(ap_b)}"

    add("a", "D-RMM AP >= Sparse R-CNN baseline AP", "Table 1: 47.0 vs 45.0 (R50)", ("drmm", "baseline"), a, ("AP",))

    def b(ap_d, ar_d, ap_n, ar_n):
        gap, ar_diff = ap_d - ap_n, abs(ar_d - ar_n)
        return gap >= AP_GAP and ar_diff <= AR_TOL, (
            f"AP D-RMM {_p(ap_d)} vs NLL-only {_p(ap_n)} (gap {_p(gap)}, needs >= {_p(AP_GAP)}); "
            f"AR100 {_p(ar_d)} vs {_p(ar_n)} (|diff| {_p(ar_diff)}, needs <= {_p(AR_TOL)})")

    add("b", f"NLL-only AP well below D-RMM (>= {_p(AP_GAP)} AP points lower) while AR100 is similar "
             f"(within {_p(AR_TOL)} points)",
        "Tables 2, 3: AP 35.6 vs 47.0, AR 65.1 vs 65.3", ("drmm", "nll_only"), b, ("AP", "AR100"))

    def c(ap_d, nms_d, ap_n, nms_n):
        lift_d, lift_n = nms_d - ap_d, nms_n - ap_n
        return lift_n > lift_d, (f"NMS 0.7 lifts NLL-only AP {_p(ap_n)} -> {_p(nms_n)} ({lift_n * 100:+.1f}), "
                                 f"D-RMM {_p(ap_d)} -> {_p(nms_d)} ({lift_d * 100:+.1f})")

    add("c", "NMS (IoU 0.7) lifts NLL-only AP by more than it lifts D-RMM's",
        "Figure 7, Table 3: NLL-only 35.6 -> 42.7; D-RMM little change", ("drmm", "nll_only"), c, ("AP", "AP_nms0.7"))

    def d(ece_d, ece_b):
        return ece_d < ece_b, f"ECE D-RMM {_p(ece_d)} vs baseline {_p(ece_b)}"

    add("d", "D-RMM ECE < Sparse R-CNN baseline ECE (more reliable confidence)", "Figure 2 (and Figure 8)",
        ("drmm", "baseline"), d, ("ECE",))

    def e(r_d, r_n):
        return r_d > r_n, f"last-stage exp(-MCM) D-RMM {r_d:.3f} vs NLL-only {r_n:.3f}"

    add("e", "last-stage exp(-MCM) higher with the MCM loss (D-RMM) than without (NLL-only)",
        "Tables 4, 9: 0.892 vs 0.590", ("drmm", "nll_only"), e, ("exp_neg_mcm_last",))
    return claims


# ----------------------------------------------------------------------------- reporting


def machine_info(device: str | None = None) -> dict[str, Any]:
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": dev}
    if dev.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    return info


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


TABLE_HEADER = ("variant", "paper AP", "iters", "s/iter", "AP", "AP50", "AR100", "ECE", "AP NMS0.7", "AP WTA",
                "exp(-MCM) last", "exp(-MCM) per stage")


def format_table(rows: dict[str, dict[str, Any]], failed: dict[str, str] | None = None) -> str:
    """Markdown table, one row per variant; AP/AR/ECE in percentage points, exp(-MCM) in 0..1."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for name, r in rows.items():
        stages = r.get("exp_neg_mcm_stages") or []
        cells = [name, f"{VARIANTS[name].paper_ap:.1f}" if name in VARIANTS else "-",
                 str(r["iterations"]) if r.get("iterations") is not None else "-", _f(r.get("seconds_per_iter"), 2),
                 *(_p(r.get(k, float("nan"))) for k in ("AP", "AP50", "AR100", "ECE", "AP_nms0.7", "AP_wta")),
                 _f(r.get("exp_neg_mcm_last")), " / ".join(_f(s) for s in stages) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, msg in (failed or {}).items():
        lines.append(f"| {name} | " + " | ".join(["failed"] + ["-"] * (len(TABLE_HEADER) - 2)) + " |")
    return "\n".join(lines)


def format_claims(claims: list[dict[str, str]]) -> str:
    return "\n".join(f"({c['id']}) {c['verdict'].upper()}: {c['claim']}. Ours: {c['numbers']}. Paper: {c['paper']}."
                     for c in claims)


def write_results(out: Path, report: dict[str, Any]) -> None:
    """``OUT/results.md`` and ``OUT/results.json`` from :func:`reproduce`'s report."""
    from .evaluation import write_json

    write_json(out / "results.json", report)
    b = report["budget"]
    m = report["machine"]
    if b["iters"] is not None:
        budget = f"exactly {b['iters']} training iterations per variant (no time limit)"
    else:
        budget = (f"{b['minutes']:g} minutes of training per variant (`train.time_limit_minutes`; "
                  f"`max_iters` {LARGE_MAX_ITERS}): a variant with a faster objective does more iterations, "
                  "which is part of the comparison; the iteration count depends on the machine and its load")
    rows, failed = report["variants"], report.get("failed", {})
    md = [
        "# D-RMM reproduction: objective variants under one budget", "",
        "```", report["command"], "```", "",
        f"* machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), device {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"* budget: {budget}",
        f"* base config: `{report['base_config']}`" + (f" with `--set {' '.join(report['overrides'])}`"
                                                          if report["overrides"] else ""),
        f"* seed {report['seed']}, data `{report['data']}`; same data, seed, architecture, learning rate, "
        "schedule and budget for every variant. The Sparse R-CNN baseline uses the base config's learning "
        f"rate ({report['lr']:g}) and schedule, not its COCO recipe's, to compare like with like at this scale.",
        "* one training per variant, one seed, nothing tuned: differences of a point or so may be seed noise.", "",
        "## Results", "",
        format_table(rows, failed), "",
        "AP, AP50, AR100 (COCO, top 100), ECE (D-ECE, IoU 0.5, 10 bins, scores >= 0.05) in percentage points on "
        "the val split, from the last checkpoint. *AP NMS0.7*: after class-wise NMS at IoU 0.7; *AP WTA*: after "
        "winner-take-all at IoU 0.7. *exp(-MCM)*: mean over val ground truths of max_k comp_k / sum_k comp_k, per "
        "decoder stage (mixture variants only; for `nll_mcm_bipartite` the objective's matched component "
        "replaces the max). *paper AP*: COCO val, R50, 36 epochs (the scale here is far smaller). *s/iter*: "
        "training wall time per iteration, data loading included.", "",
    ]
    for name, msg in failed.items():
        md.append(f"* `{name}` failed: {msg}")
    if failed:
        md.append("")
    for name, note in report.get("notes", {}).items():
        md.append(f"* `{name}`: {note}")
    md += ["## The paper's claims", ""]
    for c in report["claims"]:
        md.append(f"* **({c['id']}) {c['verdict']}** - {c['claim']}. Ours: {c['numbers']}. Paper: {c['paper']}.")
    md += ["", f"Thresholds: (b) 'well below' = at least {_p(AP_GAP)} AP points lower, 'similar' AR100 = within "
           f"{_p(AR_TOL)} points; (a) uses >=, (c)-(e) strict comparisons. 'not run': a variant the claim "
           "compares was not run; 'undefined': a value it needs is NaN.", "", "## Reliability diagrams", ""]
    for name, r in rows.items():
        md += [f"### {name}", "", f"![reliability diagram of {name}]({r['reliability']})", ""]
    (out / "results.md").write_text("\n".join(md))


def _command(args: argparse.Namespace) -> str:
    """The command line, rebuilt from the parsed arguments (equivalent to what was typed)."""
    parts = ["drmm", "reproduce", "--data", str(args.data), "--out", str(args.out)]
    if args.budget_minutes is not None:
        parts += ["--budget-minutes", f"{args.budget_minutes:g}"]
    if args.iters is not None:
        parts += ["--iters", str(args.iters)]
    if args.config:
        parts += ["--config", str(args.config)]
    for o in args.overrides:
        parts += ["--set", o]
    if args.variants:
        parts += ["--variants", args.variants]
    if args.seed is not None:
        parts += ["--seed", str(args.seed)]
    if args.device:
        parts += ["--device", args.device]
    return shlex.join(parts)


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
    from .cli import packaged_config

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
            saved = vdir / "run" / "config.yaml"
            if saved.is_file() and _comparable(load_config(saved).to_dict()) != _comparable(cfg.to_dict()):
                notes[name] = (f"reused from an earlier run whose config differs from this one's; delete {vdir} "
                               "to run it again")
                print(f"  warning: {notes[name]}", file=sys.stderr)
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
        rows[name] = collect_variant(vdir)
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


# ----------------------------------------------------------------------------- CLI


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.iters is None and args.budget_minutes is None:
        raise ValueError("give a budget: --budget-minutes M (training time per variant) or --iters N")
    if args.iters is not None and args.budget_minutes is not None:
        print(f"--iters {args.iters} given: every variant trains exactly {args.iters} iterations, "
              "--budget-minutes is not applied")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(DEFAULT_VARIANTS)
    report = reproduce(args.data, args.out, config=args.config, overrides=args.overrides, variants=variants,
                       seed=args.seed, budget_minutes=args.budget_minutes, iters=args.iters, device=args.device,
                       progress=not args.no_progress, command=_command(args))
    print()
    print(format_table(report["variants"], report["failed"]))
    print("(AP, AR, ECE in percentage points; exp(-MCM) in 0..1)\n")
    print(format_claims(report["claims"]))
    print(f"\nwrote {Path(args.out) / 'results.md'} and results.json")
    return 0


def register(subparsers) -> None:
    """Add ``reproduce`` to the ``drmm`` sub-command parsers."""
    p = subparsers.add_parser(
        "reproduce", help="train the paper's objective variants under one budget and check its claims",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder: DIR/annotations/{train,val}.json, DIR/{train,val}/")
    p.add_argument("--out", required=True, help="output folder (OUT/<variant>/, OUT/results.md, OUT/results.json)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="training time per variant; faster objectives do more iterations")
    p.add_argument("--iters", type=int, metavar="N", help="exactly N training iterations per variant instead (reproducible)")
    p.add_argument("--config", help="base YAML config (default: the packaged demo_cpu.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config value for every variant (repeatable)")
    p.add_argument("--variants", metavar="A,B,...", help=f"comma-separated subset (default, in order: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--seed", type=int, metavar="S", help="train.seed for every variant (default: the config's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)


__all__ = ["AP_GAP", "AR_TOL", "DEFAULT_VARIANTS", "VARIANTS", "Variant", "collect_variant", "format_claims",
           "format_table", "judge_claims", "register", "reproduce", "run_variant", "variant_config",
           "write_results"]
