"""Post-hoc calibration of detection scores: temperature scaling, Platt scaling, isotonic regression.

Each calibrator is fitted on one set of detections, ``(scores [N], correct [N])``,
and maps any scores to new ones; it is one map for all classes.

* ``temperature``: ``s' = sigmoid(logit(s) / T)``, the ``T > 0`` that minimises the
  binary cross-entropy of ``correct`` (Guo et al. 2017, on the score's logit).
* ``platt``: ``s' = sigmoid(a * logit(s) + b)``, logistic regression of ``correct``
  on ``logit(s)`` (Platt 1999).
* ``isotonic``: the non-decreasing fit of ``correct`` on ``s`` by pool-adjacent-
  violators (least squares); new scores are interpolated linearly between the
  fitted points and clipped to the end values outside them (as scikit-learn's
  ``IsotonicRegression``).

Scores are clipped to [1e-6, 1 - 1e-6] before the logit, so 0 and 1 stay finite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

METHODS = ("temperature", "platt", "isotonic")
EPS = 1e-6


def logit(scores: np.ndarray) -> np.ndarray:
    """``log(s / (1 - s))`` of scores clipped to [EPS, 1 - EPS]."""
    s = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    return np.log(s) - np.log1p(-s)


def _fit_logistic(x: np.ndarray, y: np.ndarray, bias: bool) -> tuple[float, float]:
    """``(a, b)`` minimising the mean binary cross-entropy of ``y`` under ``sigmoid(a x + b)`` (``b = 0`` without bias).

    ``a = exp(u)`` without bias (a temperature is positive); ``a`` free with bias.
    """
    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        a = np.exp(p[0]) if not bias else p[0]
        z = a * x + (p[1] if bias else 0.0)
        err = expit(z) - y  # d loss / d z, per detection
        value = float(np.mean(np.logaddexp(0.0, z) - y * z))
        if not bias:
            return value, np.array([np.mean(err * x) * a])
        return value, np.array([np.mean(err * x), np.mean(err)])

    x0 = np.array([1.0, 0.0]) if bias else np.array([0.0])
    bounds = [(-100.0, 100.0)] * 2 if bias else [(-10.0, 10.0)]
    p = minimize(loss, x0, jac=True, method="L-BFGS-B", bounds=bounds).x
    return (float(p[0]), float(p[1])) if bias else (float(np.exp(p[0])), 0.0)


def pav(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing sequence closest to ``y [N]`` in weighted least squares."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    means, sums, sizes = [], [], []  # one entry per block: weighted mean, weight, number of values
    for v, wi in zip(y, w):
        means.append(v)
        sums.append(wi)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            total = sums[-2] + sums[-1]
            means[-2] = (means[-2] * sums[-2] + means[-1] * sums[-1]) / total
            sums[-2], sizes[-2] = total, sizes[-2] + sizes[-1]
            del means[-1], sums[-1], sizes[-1]
    return np.repeat(means, sizes)


@dataclass
class Calibrator:
    """A fitted score map (see the module doc); ``calibrator(scores)`` gives the new scores."""

    method: str
    params: dict = field(default_factory=dict)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        p = self.params
        if self.method == "temperature":
            return expit(logit(scores) / p["temperature"])
        if self.method == "platt":
            return expit(p["a"] * logit(scores) + p["b"])
        return np.interp(scores, p["x"], p["y"])


def fit_calibrator(method: str, scores: np.ndarray, correct: np.ndarray) -> Calibrator:
    """Fit a ``method`` calibrator (one of :data:`METHODS`) on ``scores [N]`` with ``correct [N]``."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(correct, dtype=np.float64).ravel()
    if len(scores) == 0:
        raise ValueError("no detections to fit the calibrator on")
    if method == "temperature":
        a, _ = _fit_logistic(logit(scores), y, bias=False)
        return Calibrator(method, {"temperature": 1.0 / a})
    if method == "platt":
        a, b = _fit_logistic(logit(scores), y, bias=True)
        return Calibrator(method, {"a": a, "b": b})
    order = np.argsort(scores, kind="stable")
    xs, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    mean_y = np.bincount(inverse, weights=y[order]) / counts  # equal scores first pooled into one point
    fitted = pav(mean_y, counts)
    change = fitted[1:] != fitted[:-1]
    ends = np.r_[True, change] | np.r_[change, True]  # each block's first and last point: the same interpolation
    return Calibrator(method, {"x": xs[ends].tolist(), "y": fitted[ends].tolist()})
