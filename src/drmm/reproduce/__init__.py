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
Each variant's detections are also calibrated after the fact: temperature scaling
fitted on half of the val images and measured on the other half
(``eval/temperature_scaling.json``), so the calibration claim is tested against a
calibrated baseline too. ``OUT/results.md`` and ``OUT/results.json`` hold the tables,
the reliability diagrams and the paper's claims a-e, plus claim f (D-RMM as trained vs
the temperature-scaled baseline), with "held" / "not held" (see :func:`judge_claims`).
"""
# The package: variants.py (the variants, one table of config overlays), runner.py (configs,
# training + evaluation, results rows, the whole run), claims.py (the verdicts), report.py
# (tables, results.md / results.json). The command itself is drmm.cli.reproduce.
from .claims import AP_GAP, AR_TOL, judge_claims
from .report import (format_claims, format_heldout_table, format_posthoc_table, format_table, machine_info,
                     write_results)
from .runner import collect_variant, reproduce, run_variant, variant_config
from .variants import DEFAULT_VARIANTS, LARGE_MAX_ITERS, PAPER_OBJECTIVE, VARIANTS, Variant

__all__ = ["AP_GAP", "AR_TOL", "DEFAULT_VARIANTS", "LARGE_MAX_ITERS", "PAPER_OBJECTIVE", "VARIANTS", "Variant",
           "collect_variant", "format_claims", "format_heldout_table", "format_posthoc_table", "format_table",
           "judge_claims", "machine_info", "reproduce", "run_variant", "variant_config", "write_results"]
