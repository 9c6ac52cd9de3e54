"""`drmm reproduce`: variants, a tiny end-to-end run through the CLI parser, re-run skipping, claim verdicts."""
import argparse
import json
import math

import pytest
from helpers import tiny_config

from drmm.config import save_config
from drmm.data import generate_synthetic
from drmm.cli import register
from drmm.reproduce import AP_GAP, AR_TOL, VARIANTS, judge_claims, variant_config


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="drmm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def _base_cfg():
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.batch_size, t.num_workers, t.eval_interval, t.checkpoint_interval = 2, 0, 0, 0
    t.lr_steps, t.lr_steps_unit, t.interval_unit, t.warmup_iters, t.log_interval = [], "iter", "iter", 2, 1
    return cfg


def test_variants_change_only_their_objective():
    base = _base_cfg()
    base.train.lr = 1e-3
    cfgs = {n: variant_config(base, n, seed=7, iters=3) for n in VARIANTS}
    assert base.train.max_iters is None and base.train.seed == 0  # the base is not modified
    for n, c in cfgs.items():
        assert (c.train.max_iters, c.train.time_limit_minutes, c.train.seed, c.train.lr) == (3, None, 7, 1e-3), n
        assert c.model == cfgs["drmm"].model or n == "baseline"
    o = {n: c.objective for n, c in cfgs.items()}
    assert (o["drmm"].name, o["drmm"].beta, o["drmm"].nll_mode, o["drmm"].mcm_mode, o["drmm"].stop_grad) == (
        "drmm", 0.5, "mixture", "max", ["coord"])
    assert o["baseline"].name == "hungarian" and cfgs["baseline"].model.proposal_init == "whole"
    assert o["nll_only"].beta == 0 and (o["nll_bipartite"].nll_mode, o["nll_bipartite"].beta) == ("bipartite", 0)
    assert (o["nll_mcm_bipartite"].mcm_mode, o["nll_mcm_bipartite"].beta) == ("bipartite", 0.5)
    assert (o["nll_max"].nll_mode, o["nll_max"].beta) == ("max", 0)
    assert o["stopgrad_none"].stop_grad == [] and o["stopgrad_coord_class"].stop_grad == ["coord", "class"]
    timed = variant_config(base, "nll_only", budget_minutes=2.5)
    assert timed.train.time_limit_minutes == 2.5 and timed.train.max_iters >= 10**6
    with pytest.raises(ValueError, match="budget"):
        variant_config(base, "drmm")
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "nope", iters=1)


def test_reproduce_three_variants_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    generate_synthetic(data, 8, 4, image_size=64, progress=False)
    save_config(_base_cfg(), tmp_path / "base.yaml")
    out = tmp_path / "out"
    common = ["reproduce", "--data", data, "--out", out, "--config", tmp_path / "base.yaml", "--iters", 2,
              "--seed", 3, "--set", "model.num_proposals=8", "--no-progress"]
    assert _cli(common + ["--variants", "drmm,baseline,nll_only"]) == 0
    printed = capsys.readouterr().out
    md = (out / "results.md").read_text()
    assert "drmm reproduce --data" in md and "--iters 2" in md and "torch" in md and "exactly 2" in md
    for name in ("drmm", "baseline", "nll_only"):
        assert f"| {name} |" in md and f"| {name} |" in printed
        assert (out / name / "eval" / "reliability.png").is_file()
        assert f"({name}/eval/reliability.png)" in md
    assert "| nll_max |" not in md
    report = json.loads((out / "results.json").read_text())
    assert set(report["variants"]) == {"drmm", "baseline", "nll_only"} and report["seed"] == 3
    for name, row in report["variants"].items():
        assert row["iterations"] == 2 and row["seconds_per_iter"] > 0
        assert {"AP", "AP50", "AR100", "ECE", "AP_nms0.7", "AP_wta"} <= set(row)
    assert len(report["variants"]["drmm"]["exp_neg_mcm_stages"]) == 2  # tiny config: 2 stages
    assert report["variants"]["baseline"]["exp_neg_mcm_stages"] == []  # no mixture, no diagnostics
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    assert set(verdicts) == set("abcde")
    assert all(v in ("held", "not held", "undefined") for v in verdicts.values())
    for cid in "abcde":
        assert f"**({cid}) " in md and f"({cid}) " in printed

    # a re-run reuses finished variants; a missing one is run, claims needing absent variants say "not run"
    (out / "results.md").unlink()
    mtime = (out / "drmm" / "eval" / "metrics.json").stat().st_mtime_ns
    assert _cli(common + ["--variants", "drmm"]) == 0
    assert (out / "drmm" / "eval" / "metrics.json").stat().st_mtime_ns == mtime
    assert "reused" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert [c["verdict"] for c in report["claims"]] == ["not run"] * 5 and report["notes"] == {}
    assert "not run" in (out / "results.md").read_text()


def _row(AP=0.3, AR100=0.5, ECE=0.1, nms=None, mcm=0.8):
    return {"AP": AP, "AR100": AR100, "ECE": ECE, "AP_nms0.7": AP if nms is None else nms, "exp_neg_mcm_last": mcm}


def _verdicts(rows):
    return {c["id"]: c["verdict"] for c in judge_claims(rows)}


def test_claim_verdicts_held():
    rows = {"drmm": _row(AP=0.40, AR100=0.60, ECE=0.05, nms=0.41, mcm=0.9),
            "baseline": _row(AP=0.38, ECE=0.10),
            "nll_only": _row(AP=0.40 - AP_GAP, AR100=0.60 - AR_TOL + 1e-6, nms=0.45, mcm=0.6)}
    assert _verdicts(rows) == dict.fromkeys("abcde", "held")
    rows["baseline"]["AP"] = 0.40  # (a) is >=: a tie holds
    assert _verdicts(rows)["a"] == "held"


def test_claim_verdicts_not_held():
    rows = {"drmm": _row(AP=0.40, AR100=0.60, ECE=0.10, nms=0.45, mcm=0.6),
            "baseline": _row(AP=0.41, ECE=0.10),  # (a) lower AP, (d) equal ECE is not lower
            "nll_only": _row(AP=0.39, AR100=0.60, nms=0.42, mcm=0.6)}  # (b) gap 0.01, (c) lift 3 < 5, (e) equal
    assert _verdicts(rows) == dict.fromkeys("abcde", "not held")
    rows["nll_only"] = _row(AP=0.30, AR100=0.50, nms=0.42, mcm=0.7)  # (b) gap ok but AR differs by 0.10
    v = _verdicts(rows)
    assert v["b"] == "not held" and v["c"] == "held" and v["e"] == "not held"  # (e) 0.7 > 0.6 is the wrong way


def test_claim_verdicts_not_run_and_undefined():
    assert _verdicts({}) == dict.fromkeys("abcde", "not run")
    v = _verdicts({"drmm": _row(), "nll_only": _row(AP=0.1)})
    assert v["a"] == v["d"] == "not run" and v["b"] != "not run"
    claims = judge_claims({"drmm": _row(), "baseline": _row(ECE=math.nan)}, failed={"nll_only": "diverged"})
    v = {c["id"]: c for c in claims}
    assert v["d"]["verdict"] == "undefined" and v["a"]["verdict"] == "held"
    assert v["b"]["verdict"] == "not run" and "nll_only (failed)" in v["b"]["numbers"]
    assert "AP D-RMM 30.0 vs baseline 30.0" in v["a"]["numbers"]
