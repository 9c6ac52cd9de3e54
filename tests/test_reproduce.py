"""`drmm reproduce`: variant configs, a tiny end-to-end run through the CLI, re-run skipping, claim verdicts."""
import json
import math

import pytest
from helpers import run_cli, tiny_config

from drmm.config import Config, apply_overrides, save_config
from drmm.data import generate_synthetic
from drmm.reproduce import AP_GAP, AR_TOL, DEFAULT_VARIANTS, VARIANTS, format_claims, judge_claims, variant_config


def _base_cfg():
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.batch_size, t.num_workers, t.eval_interval, t.checkpoint_interval = 2, 0, 0, 0
    t.lr_steps, t.lr_steps_unit, t.interval_unit, t.warmup_iters, t.log_interval = [], "iter", "iter", 2, 1
    return cfg


# (name, beta, nll_mode, mcm_mode, stop_grad) of each D-RMM variant, from the paper's tables
EXPECTED_OBJECTIVES = {
    "drmm": ("drmm", 0.5, "mixture", "max", ["coord"]),
    "nll_only": ("drmm", 0.0, "mixture", "max", ["coord"]),
    "nll_bipartite": ("drmm", 0.0, "bipartite", "max", ["coord"]),
    "nll_mcm_bipartite": ("drmm", 0.5, "mixture", "bipartite", ["coord"]),
    "nll_max": ("drmm", 0.0, "max", "max", ["coord"]),
    "stopgrad_none": ("drmm", 0.5, "mixture", "max", []),
    "stopgrad_coord_class": ("drmm", 0.5, "mixture", "max", ["coord", "class"]),
}


def test_variants_set_their_objective_and_nothing_else():
    # a base whose objective differs from the paper's everywhere a variant could leave it in place
    base = apply_overrides(_base_cfg(), ["train.lr=1e-3", "objective.beta=2.0", "objective.nll_mode=max",
                                         "objective.mcm_mode=bipartite", "objective.stop_grad=[mix]",
                                         "objective.reduction=mean", "objective.cls_weight=3.0"])
    before = base.to_dict()
    assert list(DEFAULT_VARIANTS) == ["drmm", "baseline", *[n for n in EXPECTED_OBJECTIVES if n != "drmm"]]
    cfgs = {n: variant_config(base, n, seed=7, iters=3) for n in VARIANTS}
    assert base.to_dict() == before  # the base is not modified
    for n, c in cfgs.items():
        o = c.objective
        expected = EXPECTED_OBJECTIVES.get(n, ("hungarian", 2.0, "max", "bipartite", ["mix"]))
        assert (o.name, o.beta, o.nll_mode, o.mcm_mode, o.stop_grad) == expected, n
        assert (o.reduction, o.cls_weight) == ("mean", 3.0), n  # fields no variant defines come from the base
        assert c.model.proposal_init == ("whole" if n == "baseline" else "grid"), n
        # everything else is the base's, apart from the budget fields
        d, b = c.to_dict(), Config.from_dict(before).to_dict()
        for key in ("name", "beta", "nll_mode", "mcm_mode", "stop_grad"):
            d["objective"].pop(key), b["objective"].pop(key)
        d["model"].pop("proposal_init"), b["model"].pop("proposal_init")
        budget = {k: d["train"].pop(k) for k in ("max_iters", "time_limit_minutes", "seed", "eval_interval")}
        for k in budget:
            b["train"].pop(k)
        assert d == b and budget == {"max_iters": 3, "time_limit_minutes": None, "seed": 7, "eval_interval": 0}, n
    timed = variant_config(base, "nll_only", budget_minutes=2.5)
    assert timed.train.time_limit_minutes == 2.5 and timed.train.max_iters >= 10**6 and timed.train.seed == 0
    with pytest.raises(ValueError, match="budget"):
        variant_config(base, "drmm")
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "nope", iters=1)
    with pytest.raises(ValueError, match="--iters must be >= 1"):
        variant_config(base, "drmm", iters=0)
    with pytest.raises(ValueError, match="--budget-minutes must be > 0"):
        variant_config(base, "drmm", budget_minutes=0)


def test_reproduce_three_variants_end_to_end(tmp_path):
    data = tmp_path / "data"
    generate_synthetic(data, 8, 4, image_size=64, progress=False)
    save_config(_base_cfg(), tmp_path / "base.yaml")
    out = tmp_path / "out"
    common = ["reproduce", "--data", data, "--out", out, "--config", tmp_path / "base.yaml", "--iters", 2,
              "--seed", 3, "--set", "model.num_proposals=8", "--no-progress"]
    code, printed, _ = run_cli(*common, "--variants", "drmm,baseline,nll_only")
    assert code == 0
    md = (out / "results.md").read_text()
    assert "drmm reproduce --data" in md and "--iters 2" in md and "torch" in md and "exactly 2" in md
    for name in ("drmm", "baseline", "nll_only"):
        assert f"| {name} |" in md and f"| {name} |" in printed
        assert (out / name / "eval" / "reliability.png").is_file()
        assert f"({name}/eval/reliability.png)" in md
    assert "| nll_max |" not in md
    report = json.loads((out / "results.json").read_text())
    rows = report["variants"]
    assert set(rows) == {"drmm", "baseline", "nll_only"} and report["seed"] == 3
    for name, row in rows.items():
        assert row["iterations"] == 2 and row["seconds_per_iter"] > 0
        assert {"AP", "AP50", "AR100", "ECE", "AP_nms0.7", "AP_wta"} <= set(row)
    for name, row in rows.items():  # temperature scaling fitted on one half of val, measured on the other
        ts = json.loads((out / name / "eval" / "temperature_scaling.json").read_text())
        assert ts["n_fit"] > 0 and ts["n_report"] > 0 and ts["params"]["temperature"] > 0
        assert (row["ECE_half"], row["ECE_half_ts"], row["temperature"]) == (
            ts["d_ece_before"], ts["d_ece_after"], ts["params"]["temperature"])
        assert 0 <= row["LaECE"] <= 1 and 0 <= row["LaECE_half_ts"] <= 1
    assert "## Calibration against a temperature-scaled baseline" in md and "LaECE, temperature-scaled" in printed
    for name, row in rows.items():  # every candidate calibrator fitted on one half, measured on the other
        h = json.loads((out / name / "eval" / "heldout_calibration.json").read_text())
        assert len(h["candidates"]) + len(h["skipped"]) == 12 and set(h["best"]) == {"iou", "correct"}
        assert h["best"]["iou"]["laece_0"] == min([h["as_trained"]["laece_0"]] + [
            c["laece_0"] for c in h["candidates"] if c["target"] == "iou"])
        assert all(c["AP"] == h["as_trained"]["AP"] for c in h["candidates"])  # a calibrated model keeps AP
        assert h["as_trained"]["d_ece"] == pytest.approx(row["ECE_half"])  # the same half as temperature scaling
    assert "## Calibration after each detector's best post-hoc calibrator" in md and "best for LaECE_0" in printed
    assert len(rows["drmm"]["exp_neg_mcm_stages"]) == 2  # tiny config: 2 stages
    assert rows["baseline"]["exp_neg_mcm_stages"] == []  # no mixture, no diagnostics
    claims = {c["id"]: c for c in report["claims"]}
    assert list(claims) == list("abcdef")
    # the claims show this run's numbers, and results.md and the console say what results.json says
    assert claims["a"]["numbers"] == f"AP D-RMM {100 * rows['drmm']['AP']:.1f} vs baseline {100 * rows['baseline']['AP']:.1f}"
    for cid, c in claims.items():
        assert f"**({cid}) {c['verdict']}** - " in md and f"({cid}) {c['verdict'].upper()}: " in printed

    # a re-run reuses finished variants; a missing one is run, claims needing absent variants say "not run"
    (out / "results.md").unlink()
    mtime = (out / "drmm" / "eval" / "metrics.json").stat().st_mtime_ns
    code, printed, _ = run_cli(*common, "--variants", "drmm")
    assert code == 0 and "reused" in printed
    assert (out / "drmm" / "eval" / "metrics.json").stat().st_mtime_ns == mtime
    report = json.loads((out / "results.json").read_text())
    assert [c["verdict"] for c in report["claims"]] == ["not run"] * 6 and report["notes"] == {}
    assert "not run" in (out / "results.md").read_text()


def test_reproduce_cli_needs_a_budget_and_known_variants(tmp_path):
    code, _, err = run_cli("reproduce", "--data", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and err.startswith("drmm reproduce: error: give a budget")
    code, _, err = run_cli("reproduce", "--data", tmp_path, "--out", tmp_path / "o", "--iters", 1, "--variants", "x")
    assert code == 2 and "unknown variant(s) ['x']" in err


def _row(AP, AR100, ECE, nms, mcm, half=(None, None)):
    """``half``: D-ECE on the held-out half of val before and after temperature scaling."""
    return {"AP": AP, "AR100": AR100, "ECE": ECE, "AP_nms0.7": nms, "exp_neg_mcm_last": mcm,
            "ECE_half": half[0], "ECE_half_ts": half[1]}


def _claims(rows, failed=None):
    return {c["id"]: (c["verdict"], c["numbers"]) for c in judge_claims(rows, failed)}


def test_claims_held_with_their_numbers():
    rows = {"drmm": _row(AP=0.5, AR100=0.625, ECE=0.05, nms=0.5, mcm=0.875, half=(0.0625, 0.05)),
            "baseline": _row(AP=0.375, AR100=0.5, ECE=0.125, nms=0.375, mcm=None, half=(0.125, 0.075)),
            "nll_only": _row(AP=0.25, AR100=0.6, ECE=0.25, nms=0.375, mcm=0.5)}
    assert _claims(rows) == {
        "a": ("held", "AP D-RMM 50.0 vs baseline 37.5"),
        "b": ("held", "AP D-RMM 50.0 vs NLL-only 25.0 (gap 25.0, needs >= 2.0); "
                      "AR100 62.5 vs 60.0 (|diff| 2.5, needs <= 5.0)"),
        "c": ("held", "NMS 0.7 lifts NLL-only AP 25.0 -> 37.5 (+12.5), D-RMM 50.0 -> 50.0 (+0.0)"),
        "d": ("held", "ECE D-RMM 5.0 vs baseline 12.5"),
        "e": ("held", "last-stage exp(-MCM) D-RMM 0.875 vs NLL-only 0.500"),
        "f": ("held", "held-out half: D-ECE D-RMM 6.2 (temperature-scaled 5.0) vs temperature-scaled baseline 7.5 "
                      "(before 12.5)"),
    }
    claims = judge_claims(rows)
    assert [(c["id"], c["needs"]) for c in claims] == [
        ("a", "drmm, baseline"), ("b", "drmm, nll_only"), ("c", "drmm, nll_only"), ("d", "drmm, baseline"),
        ("e", "drmm, nll_only"), ("f", "drmm, baseline")]
    assert format_claims(claims).splitlines()[0] == (
        "(a) HELD: D-RMM AP >= Sparse R-CNN baseline AP. Ours: AP D-RMM 50.0 vs baseline 37.5. "
        "Paper: Table 1: 47.0 vs 45.0 (R50).")


def test_claims_not_held_with_their_numbers():
    rows = {"drmm": _row(AP=0.25, AR100=0.5, ECE=0.125, nms=0.5, mcm=0.5, half=(0.125, 0.0625)),
            "baseline": _row(AP=0.375, AR100=0.5, ECE=0.125, nms=0.375, mcm=None,  # (d) equal ECE is not lower
                             half=(0.25, 0.0625)),
            "nll_only": _row(AP=0.24, AR100=0.5, ECE=0.25, nms=0.25, mcm=0.75)}
    assert _claims(rows) == {
        "a": ("not held", "AP D-RMM 25.0 vs baseline 37.5"),
        "b": ("not held", "AP D-RMM 25.0 vs NLL-only 24.0 (gap 1.0, needs >= 2.0); "
                          "AR100 50.0 vs 50.0 (|diff| 0.0, needs <= 5.0)"),
        "c": ("not held", "NMS 0.7 lifts NLL-only AP 24.0 -> 25.0 (+1.0), D-RMM 25.0 -> 50.0 (+25.0)"),
        "d": ("not held", "ECE D-RMM 12.5 vs baseline 12.5"),
        "e": ("not held", "last-stage exp(-MCM) D-RMM 0.500 vs NLL-only 0.750"),
        "f": ("not held", "held-out half: D-ECE D-RMM 12.5 (temperature-scaled 6.2) vs temperature-scaled "
                          "baseline 6.2 (before 25.0)"),
    }
    # (b) with a large AP gap still fails when AR100 differs by more than AR_TOL
    rows["nll_only"] = _row(AP=0.125, AR100=0.375, ECE=0.25, nms=0.25, mcm=0.75)
    assert _claims(rows)["b"] == ("not held", "AP D-RMM 25.0 vs NLL-only 12.5 (gap 12.5, needs >= 2.0); "
                                              "AR100 50.0 vs 37.5 (|diff| 12.5, needs <= 5.0)")


def test_claims_at_their_thresholds():
    drmm = _row(AP=0.40, AR100=0.60, ECE=0.05, nms=0.41, mcm=0.9, half=(0.05, 0.05))
    rows = {"drmm": drmm, "baseline": _row(AP=0.40, AR100=0.5, ECE=0.10, nms=0.4, mcm=None,  # (a) a tie holds
                                           half=(0.1, 0.05 + 1e-9)),
            "nll_only": _row(AP=0.40 - AP_GAP, AR100=0.60 - AR_TOL + 1e-6, ECE=0.2, nms=0.45, mcm=0.6)}
    assert {k: v for k, (v, _) in _claims(rows).items()} == dict.fromkeys("abcdef", "held")
    rows["nll_only"]["AR100"] = 0.60 - AR_TOL - 1e-6
    assert _claims(rows)["b"][0] == "not held"
    rows["baseline"]["ECE_half_ts"] = 0.05  # (f) a tie is not lower
    assert _claims(rows)["f"][0] == "not held"


def test_claims_undefined_and_not_run():
    rows = {"drmm": _row(AP=0.5, AR100=0.625, ECE=math.nan, nms=None, mcm=None),  # no detection >= 0.05, ...
            "baseline": _row(AP=0.375, AR100=0.5, ECE=0.125, nms=0.375, mcm=None)}
    claims = _claims(rows, failed={"nll_only": "diverged"})
    assert claims == {
        "a": ("held", "AP D-RMM 50.0 vs baseline 37.5"),
        "b": ("not run", "variant(s) not run: nll_only (failed)"),
        "c": ("not run", "variant(s) not run: nll_only (failed)"),
        "d": ("undefined", "ECE D-RMM nan vs baseline 12.5"),
        "e": ("not run", "variant(s) not run: nll_only (failed)"),
        "f": ("undefined", "held-out half: D-ECE D-RMM nan (temperature-scaled nan) vs temperature-scaled "
                           "baseline nan (before nan)"),
    }
    rows["nll_only"] = _row(AP=0.25, AR100=0.625, ECE=0.25, nms=0.375, mcm=0.5)
    claims = _claims(rows)
    assert claims["c"] == ("undefined", "NMS 0.7 lifts NLL-only AP 25.0 -> 37.5 (+12.5), D-RMM 50.0 -> nan (+nan)")
    assert claims["e"] == ("undefined", "last-stage exp(-MCM) D-RMM nan vs NLL-only 0.500")
    assert claims["b"][0] == "held"
    assert _claims({}) == dict.fromkeys("abcdef", ("not run", "variant(s) not run: drmm, baseline")) | {
        k: ("not run", "variant(s) not run: drmm, nll_only") for k in "bce"}
