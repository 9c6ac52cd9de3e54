"""Strict JSON output for results (metrics, detections, diagnostics, reports)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _json_safe(obj: Any) -> Any:
    """NaN / inf become ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON (NaN and inf as null)."""
    Path(path).write_text(json.dumps(_json_safe(obj), indent=indent))
