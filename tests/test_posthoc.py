"""Post-hoc calibrators: each recovers a known miscalibration; PAV against a hand example and brute force."""
import itertools

import numpy as np
import pytest

from drmm.evaluation import expected_calibration_error, fit_calibrator, pav


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _miscalibrated(n=40_000, seed=0, slope=2.0, shift=0.0):
    """True probability sigmoid(z); the score reports sigmoid(slope * z + shift)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    correct = rng.random(n) < _sigmoid(z)
    return _sigmoid(slope * z + shift), correct


def test_temperature_recovers_the_slope():
    scores, correct = _miscalibrated(slope=2.0)  # logit(score) = 2 z: T = 2 undoes it
    cal = fit_calibrator("temperature", scores, correct)
    assert cal.params["temperature"] == pytest.approx(2.0, rel=0.05)
    fresh, fresh_correct = _miscalibrated(seed=1)
    before = expected_calibration_error(fresh, fresh_correct, min_score=0).ece
    after = expected_calibration_error(cal(fresh), fresh_correct, min_score=0).ece
    assert before > 0.05 and after < 0.015
    sharp, sharp_correct = _miscalibrated(slope=0.5)  # under-confident: T = 0.5
    assert fit_calibrator("temperature", sharp, sharp_correct).params["temperature"] == pytest.approx(0.5, rel=0.05)


def test_platt_recovers_slope_and_shift():
    scores, correct = _miscalibrated(slope=2.0, shift=1.0)  # z = (logit - 1) / 2: a = 0.5, b = -0.5
    cal = fit_calibrator("platt", scores, correct)
    assert cal.params["a"] == pytest.approx(0.5, abs=0.03) and cal.params["b"] == pytest.approx(-0.5, abs=0.05)
    fresh, fresh_correct = _miscalibrated(seed=2, slope=2.0, shift=1.0)
    assert expected_calibration_error(cal(fresh), fresh_correct, min_score=0).ece < 0.015
    # temperature cannot undo a shift; Platt can
    t = fit_calibrator("temperature", scores, correct)
    assert expected_calibration_error(t(fresh), fresh_correct, min_score=0).ece > 0.03


def test_pav_hand_examples():
    np.testing.assert_allclose(pav([1, 3, 2, 4, 3, 5]), [1, 2.5, 2.5, 3.5, 3.5, 5])
    np.testing.assert_allclose(pav([3, 2, 1]), [2, 2, 2])
    np.testing.assert_allclose(pav([0, 1, 0, 0, 1, 1]), [0, 1 / 3, 1 / 3, 1 / 3, 1, 1])
    np.testing.assert_allclose(pav([2, 0], weights=[3, 1]), [1.5, 1.5])  # weighted mean (6 + 0) / 4
    np.testing.assert_allclose(pav([1, 2, 3]), [1, 2, 3])


def _best_monotone_brute_force(y, levels):
    """Least-squares non-decreasing fit with values restricted to ``levels`` (exhaustive search)."""
    best, best_err = None, np.inf
    for combo in itertools.combinations_with_replacement(levels, len(y)):
        err = sum((a - b) ** 2 for a, b in zip(combo, y))
        if err < best_err - 1e-12:
            best, best_err = combo, err
    return np.array(best), best_err


@pytest.mark.parametrize("seed", range(5))
def test_pav_is_the_least_squares_monotone_fit(seed):
    y = np.random.default_rng(seed).integers(0, 2, 7).astype(float)
    fit = pav(y)
    # the optimal fit takes values that are means of runs of y: k / m for m <= 7
    levels = sorted({k / m for m in range(1, 8) for k in range(m + 1)})
    _, err = _best_monotone_brute_force(y, levels)
    assert np.all(np.diff(fit) >= 0) and np.sum((fit - y) ** 2) == pytest.approx(err, abs=1e-12)


def test_isotonic_is_monotone_and_calibrates():
    scores, correct = _miscalibrated(slope=3.0, shift=-1.0)
    cal = fit_calibrator("isotonic", scores, correct)
    grid = np.linspace(0, 1, 1001)
    assert np.all(np.diff(cal(grid)) >= 0) and cal(grid).min() >= 0 and cal(grid).max() <= 1
    assert len(cal.params["x"]) < 200  # the blocks' end points, not every training score
    fresh, fresh_correct = _miscalibrated(seed=3, slope=3.0, shift=-1.0)
    assert expected_calibration_error(cal(fresh), fresh_correct, min_score=0).ece < 0.02


def test_isotonic_by_hand_with_tied_scores():
    # scores 0.1, 0.2 (twice: one right, one wrong), 0.3, 0.4 -> y 1, 0.5, 0, 1: PAV pools 1, 0.5 (w 1, 2), 0
    cal = fit_calibrator("isotonic", [0.3, 0.2, 0.1, 0.2, 0.4], [False, True, True, False, True])
    np.testing.assert_allclose(cal([0.1, 0.2, 0.3, 0.4]), [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(cal([0.0, 0.35, 1.0]), [0.5, 0.75, 1.0])  # clipped ends, linear in between


def test_calibrator_errors_and_extreme_scores():
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        fit_calibrator("beta", [0.5], [True])
    with pytest.raises(ValueError, match="no detections"):
        fit_calibrator("temperature", [], [])
    cal = fit_calibrator("temperature", [0.0, 1.0, 0.5, 0.5], [False, True, True, False])
    out = cal(np.array([0.0, 1.0]))
    assert np.all(np.isfinite(out)) and 0 <= out[0] < 0.5 < out[1] <= 1
