"""A fitted score calibrator inside the model: its file format, its checks and :class:`ScoreCalibration`.

A calibrator is a plain dict (the JSON file of ``drmm calibration --save`` and
``drmm calibrate``, and the ``"calibrator"`` key of a checkpoint)::

    {"format": "drmm-calibrator", "version": 1, "method": "temperature" | "platt" | "isotonic",
     "per_class": bool, "params": {...},        # the all-classes map
     "n_fit": int, "fit": {...},                # what it was fitted on (free-form, for people)
     "classes": {"<category id>": {"name": str, "n_fit": int, "params": {...}}  # per_class only; a class
                                  | {"name": str, "n_fit": int, "fallback": "why"}}}  # without params uses "params"

``params``: ``{"temperature": T > 0}``, ``{"a": a > 0, "b": b}`` (``sigmoid(a logit(s) + b)``)
or ``{"x": [...], "y": [...]}`` (isotonic: strictly increasing ``x`` in [0, 1], non-decreasing
``y`` in [0, 1], linear in between, clipped outside; as :class:`drmm.evaluation.posthoc.Calibrator`).

:class:`ScoreCalibration` applies it to the kept detections, after the top-k, so the
detections and their order within a class never change. The applied map is
``(1 - TIE) f(s) + TIE u(s)`` with ``u`` a strictly increasing tie-break in [0, 1]
(``log`` of the score, rescaled): it moves scores by at most ``TIE`` = 1e-6, but an
isotonic step (flat) or a clipped / saturated logit no longer merges different scores.
It is computed, and returned, in float64: float32 cannot show differences of 1e-6 x
the score's own spacing, and COCO AP orders equal scores by image, so equal scores
would move AP. With float64, any two different float32 raw scores >= ``TIE_MIN`` stay
different and in order, so AP is exactly the raw model's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

FORMAT, VERSION = "drmm-calibrator", 1
METHODS = ("temperature", "platt", "isotonic")
PARAMS = {"temperature": ("temperature",), "platt": ("a", "b"), "isotonic": ("x", "y")}
EPS = 1e-6  # scores clipped to [EPS, 1 - EPS] before the logit, as posthoc.py
TIE, TIE_MIN = 1e-6, 1e-12  # weight and lowest score of the strictly increasing tie-break term
REFIT = "refit it with drmm calibrate or drmm calibration --fit ... --save"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def check_params(method: str, params: Any, where: str) -> dict:
    """``params`` of one map checked (see the module doc); a ``ValueError`` naming ``where`` and the problem."""
    if not isinstance(params, dict):
        raise ValueError(f"{where}: params must be an object with {', '.join(PARAMS[method])}, got {params!r}")
    missing = [k for k in PARAMS[method] if k not in params]
    if missing:
        raise ValueError(f"{where}: {method} params lack {', '.join(missing)}")
    if method == "temperature":
        t = _number(params["temperature"], f"{where}: temperature")
        if t <= 0:
            raise ValueError(f"{where}: temperature must be > 0, got {t}")
        return {"temperature": t}
    if method == "platt":
        a, b = _number(params["a"], f"{where}: a"), _number(params["b"], f"{where}: b")
        if a <= 0:
            raise ValueError(f"{where}: Platt slope a = {a} <= 0 would reverse (or erase) the ranking")
        return {"a": a, "b": b}
    xs, ys = params["x"], params["y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs or len(xs) != len(ys):
        raise ValueError(f"{where}: isotonic x and y must be non-empty lists of equal length")
    xs = [_number(v, f"{where}: x[{i}]") for i, v in enumerate(xs)]
    ys = [_number(v, f"{where}: y[{i}]") for i, v in enumerate(ys)]
    if any(b <= a for a, b in zip(xs, xs[1:])) or any(b < a for a, b in zip(ys, ys[1:])):
        raise ValueError(f"{where}: isotonic x must be strictly increasing and y non-decreasing")
    if min(xs + ys) < 0 or max(xs + ys) > 1:
        raise ValueError(f"{where}: isotonic x and y must lie in [0, 1]")
    return {"x": xs, "y": ys}


def check_calibrator(spec: Any, source: str | Path) -> dict:
    """A calibrator dict checked and normalised (see the module doc); errors name ``source`` and the fix."""
    def fail(what: str):
        raise ValueError(f"{source}: not a usable drmm calibrator: {what}; {REFIT}")

    if not isinstance(spec, dict):
        fail(f"expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != FORMAT:
        fail(f"'format' is {spec.get('format')!r}, not {FORMAT!r}")
    if spec.get("version") != VERSION:
        fail(f"version {spec.get('version')!r} is not {VERSION} (written by another drmm version)")
    method = spec.get("method")
    if method not in METHODS:
        fail(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if not isinstance(spec.get("per_class"), bool):
        fail("'per_class' must be true or false")
    try:
        out = {"format": FORMAT, "version": VERSION, "method": method, "per_class": spec["per_class"],
               "params": check_params(method, spec.get("params"), "params"),
               "n_fit": int(spec.get("n_fit", 0)), "fit": dict(spec.get("fit") or {})}
        if spec["per_class"]:
            classes = spec.get("classes")
            if not isinstance(classes, dict) or not classes:
                raise ValueError("a per-class calibrator needs 'classes': {category id: {name, params | fallback}}")
            out["classes"] = {}
            for key, entry in classes.items():
                if not str(key).lstrip("-").isdigit() or not isinstance(entry, dict) or "name" not in entry:
                    raise ValueError(f"classes[{key!r}] must be keyed by a category id and hold 'name'")
                item = {"name": str(entry["name"]), "n_fit": int(entry.get("n_fit", 0))}
                if entry.get("params") is not None:
                    item["params"] = check_params(method, entry["params"], f"classes[{key!r}]")
                elif entry.get("fallback"):
                    item["fallback"] = str(entry["fallback"])
                else:
                    raise ValueError(f"classes[{key!r}] has neither 'params' nor 'fallback'")
                out["classes"][str(int(key))] = item
    except (ValueError, TypeError) as e:
        fail(str(e))
    return out


def read_calibrator(path: str | Path) -> dict:
    """A calibrator JSON file (``drmm calibration --save``, ``drmm calibrate``) read and checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibrator file not found: {path}")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a usable drmm calibrator: invalid JSON ({e}); {REFIT}") from e
    return check_calibrator(spec, path)


def check_calibrator_classes(spec: dict, class_names: Sequence[str], cat_ids: Sequence[int],
                             source: str | Path, model: str = "the model") -> None:
    """A per-class calibrator must have exactly the model's classes (ids and names); one map fits any model."""
    if not spec["per_class"]:
        return
    mine = {int(k): v["name"] for k, v in spec["classes"].items()}
    theirs = {int(c): str(n) for c, n in zip(cat_ids, class_names)}
    if set(mine) != set(theirs):
        raise ValueError(f"{source}: per-class calibrator for category ids {sorted(mine)}, but {model} has "
                         f"{sorted(theirs)}; fit one on this model's detections (drmm calibrate)")
    wrong = [f"{c}: {mine[c]!r} vs {theirs[c]!r}" for c in sorted(mine) if mine[c] != theirs[c]]
    if wrong:
        raise ValueError(f"{source}: per-class calibrator's class names differ from {model}'s ({wrong[0]}); "
                         "fit one on this model's detections (drmm calibrate)")


def _class_params(spec: dict, cat_ids: Sequence[int]) -> list[dict]:
    """The params of each contiguous label 0..C-1 (the all-classes map where a class has none)."""
    if not spec["per_class"]:
        return [spec["params"]] * len(cat_ids)
    classes = spec["classes"]
    return [classes.get(str(int(c)), {}).get("params", spec["params"]) for c in cat_ids]


class ScoreCalibration(nn.Module):
    """``scores [B, N]``, ``labels [B, N]`` (contiguous 0..C-1) -> calibrated ``[B, N]`` float64.

    Temperature and Platt: ``sigmoid(a[label] logit(s) + b[label])``. Isotonic: linear
    interpolation in the label's knots ``x [C, P]``, ``y [C, P]`` (padded with x = 2,
    beyond every score, and the last y), found by counting the knots <= s and gathering;
    no searchsorted, so it traces into ONNX (opset >= 16). Buffers are not persistent:
    the detector's state dict stays the checkpoint's; :attr:`spec` is what is saved.
    """

    def __init__(self, spec: dict, cat_ids: Sequence[int]) -> None:
        super().__init__()
        self.spec = spec
        self.method = spec["method"]
        params = _class_params(spec, cat_ids)
        if self.method == "isotonic":
            width = max(len(p["x"]) for p in params) + 1
            x = [p["x"] + [2.0] * (width - len(p["x"])) for p in params]
            y = [p["y"] + [p["y"][-1]] * (width - len(p["y"])) for p in params]
            self.register_buffer("x", torch.tensor(x, dtype=torch.float64), persistent=False)
            self.register_buffer("y", torch.tensor(y, dtype=torch.float64), persistent=False)
        else:
            a = [1.0 / p["temperature"] if self.method == "temperature" else p["a"] for p in params]
            b = [0.0 if self.method == "temperature" else p["b"] for p in params]
            self.register_buffer("a", torch.tensor(a, dtype=torch.float64), persistent=False)
            self.register_buffer("b", torch.tensor(b, dtype=torch.float64), persistent=False)

    def score_map(self, s: Tensor, labels: Tensor) -> Tensor:
        """The fitted map ``f(s)`` of each score under its label's parameters; ``s`` float64 ``[B, N]``."""
        if self.method != "isotonic":
            s = s.clamp(EPS, 1 - EPS)
            z = torch.log(s) - torch.log(1 - s)
            return torch.sigmoid(self.a.double()[labels] * z + self.b.double()[labels])
        x, y = self.x.double()[labels], self.y.double()[labels]  # [B, N, P]
        below = (x <= s[..., None]).sum(-1, keepdim=True)  # knots at or below the score
        j = (below - 1).clamp(0, x.shape[-1] - 2)
        x0, x1 = x.gather(-1, j), x.gather(-1, j + 1)
        y0, y1 = y.gather(-1, j), y.gather(-1, j + 1)
        t = ((s[..., None] - x0) / (x1 - x0)).clamp(0, 1)
        return (y0 + t * (y1 - y0)).squeeze(-1)

    def forward(self, scores: Tensor, labels: Tensor) -> Tensor:
        s = scores.double()
        tie = (s.clamp(min=TIE_MIN).log() - math.log(TIE_MIN)) / -math.log(TIE_MIN)
        f = self.score_map(s, labels)
        return f + TIE * (tie.clamp(max=1) - f)  # = (1 - TIE) f + TIE u (the ONNX exporter drops a 1 - 1e-6 factor)

    def extra_repr(self) -> str:
        return f"method={self.method}, per_class={self.spec['per_class']}"


def set_score_calibration(model: nn.Module, spec: dict | None, class_names: Sequence[str],
                          cat_ids: Sequence[int], source: str | Path = "calibrator",
                          model_name: str = "the model") -> nn.Module:
    """Put a calibrator in ``model``'s post-processing (``spec`` None: raw scores again); returns ``model``.

    The spec is checked (and its classes against ``class_names`` / ``cat_ids``) first.
    """
    if spec is None:
        model.postprocess.score_calibration = None
        return model
    spec = check_calibrator(spec, source)
    check_calibrator_classes(spec, class_names, cat_ids, source, model_name)
    device = next(iter(model.parameters()), torch.zeros(())).device
    model.postprocess.score_calibration = ScoreCalibration(spec, cat_ids).to(device)
    return model
