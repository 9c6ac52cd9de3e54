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

:func:`fit_calibrators` adds one map per class (a class with too few detections keeps
the all-classes map) and :class:`ClassCalibrators` writes and reads the calibrator file
that travels with a model (:mod:`drmm.models.score_calibration` applies it there).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

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


MIN_CLASS_DETECTIONS = 30
"""A class is fitted on its own with at least this many detections, correct and wrong ones among them."""


@dataclass
class ClassCalibrators:
    """One map for all classes (``overall``) and, fitted per class, one per category id.

    ``classes`` (per class only): category id -> ``{"name", "n_fit", "calibrator": Calibrator | None,
    "fallback": why}``; a class without its own map uses ``overall``. ``calibrators(scores,
    category_ids)`` maps each score with its class's map; :meth:`to_spec` is the calibrator file
    (:mod:`drmm.models.score_calibration`), :meth:`from_spec` reads one back.
    """

    method: str
    overall: Calibrator
    n_fit: int
    classes: dict[int, dict] | None = None

    @property
    def params(self) -> dict:
        return self.overall.params

    def __call__(self, scores: np.ndarray, category_ids: np.ndarray | None = None) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        out = self.overall(scores)
        if self.classes and category_ids is not None:
            ids = np.asarray(category_ids)
            for c, entry in self.classes.items():
                if entry["calibrator"] is not None and (mine := ids == c).any():
                    out[mine] = entry["calibrator"](scores[mine])
        return out

    def fallbacks(self) -> dict[int, str]:
        """Category id -> why, for the classes that use the all-classes map."""
        return {c: e["fallback"] for c, e in (self.classes or {}).items() if e["calibrator"] is None}

    def to_spec(self, fit: dict | None = None) -> dict:
        """The calibrator file's dict: plain lists, floats and strings (JSON, ``torch.load(weights_only=True)``)."""
        from ..models.score_calibration import FORMAT, VERSION, check_calibrator

        spec = {"format": FORMAT, "version": VERSION, "method": self.method, "per_class": self.classes is not None,
                "params": self.overall.params, "n_fit": self.n_fit, "fit": dict(fit or {})}
        if self.classes is not None:
            spec["classes"] = {str(c): {"name": e["name"], "n_fit": e["n_fit"],
                                        **({"params": e["calibrator"].params} if e["calibrator"] is not None
                                           else {"fallback": e["fallback"]})}
                               for c, e in sorted(self.classes.items())}
        return check_calibrator(spec, f"the fitted {self.method} calibrator")

    def save(self, path: str | Path, fit: dict | None = None) -> Path:
        """Write :meth:`to_spec` as JSON to ``path`` (the file ``--calibrator`` and ``drmm calibrate`` use)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_spec(fit), indent=1)
        text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: f"[{' '.join(m.group(1).split())}]", text)  # a list on one line
        path.write_text(text + "\n")
        return path

    @classmethod
    def from_spec(cls, spec: dict, source: str = "calibrator") -> "ClassCalibrators":
        """A calibrator dict (checked) as numpy maps."""
        from ..models.score_calibration import check_calibrator

        spec = check_calibrator(spec, source)
        classes = None
        if spec["per_class"]:
            classes = {int(c): {"name": e["name"], "n_fit": e["n_fit"], "fallback": e.get("fallback"),
                                "calibrator": Calibrator(spec["method"], e["params"]) if "params" in e else None}
                       for c, e in spec["classes"].items()}
        return cls(spec["method"], Calibrator(spec["method"], spec["params"]), spec["n_fit"], classes)


def _own_map(method: str, scores: np.ndarray, correct: np.ndarray, min_detections: int) -> Calibrator | str:
    """One class's map, or why it keeps the all-classes map."""
    n = len(scores)
    if n < min_detections:
        return f"{n} detections (< {min_detections}): uses the all-classes map"
    if correct.min() == correct.max():  # all correct or all wrong (or one IoU for all): nothing to fit
        what = "correct" if correct[0] == 1 else "wrong" if correct[0] == 0 else f"at target {correct[0]:.3g}"
        return f"all of its {n} detections {what}: uses the all-classes map"
    cal = fit_calibrator(method, scores, correct)
    if method == "platt" and cal.params["a"] <= 0:
        return f"its Platt slope ({cal.params['a']:.3g}) is not positive: uses the all-classes map"
    return cal


def fit_calibrators(method: str, scores: np.ndarray, correct: np.ndarray, category_ids: np.ndarray | None = None,
                    classes: dict[int, str] | None = None,
                    min_detections: int = MIN_CLASS_DETECTIONS) -> ClassCalibrators:
    """The all-classes map of ``method`` and, with ``classes`` (category id -> name), one map per class.

    ``scores [N]``, ``correct [N]`` (the target in [0, 1]: 1 / 0 for correct / wrong, or a detection's IoU),
    ``category_ids [N]``. A class with fewer than
    ``min_detections`` detections, or only correct or only wrong ones, or (Platt) a
    non-positive slope, keeps the all-classes map; ``fallbacks()`` says which and why.
    (:meth:`ClassCalibrators.to_spec` refuses an all-classes Platt slope <= 0: it reverses the ranking.)
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()  # booleans become 0 / 1; IoU targets stay as they are
    overall = fit_calibrator(method, scores, correct)
    per_class = None
    if classes is not None:
        ids = np.asarray(category_ids).ravel()
        per_class = {}
        for c, name in sorted(classes.items()):
            mine = ids == c
            own = _own_map(method, scores[mine], correct[mine], min_detections)
            per_class[int(c)] = {"name": str(name), "n_fit": int(mine.sum()),
                                 "calibrator": own if isinstance(own, Calibrator) else None,
                                 "fallback": None if isinstance(own, Calibrator) else own}
    return ClassCalibrators(method, overall, len(scores), per_class)
