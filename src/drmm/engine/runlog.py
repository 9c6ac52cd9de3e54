"""A run's ``log.jsonl``: one JSON object per line, ``{"type": "train" | "val", "step": N, ...}``.

Rows are appended as training goes. A run killed between two checkpoints has
logged steps past its ``last.pt``; :func:`cut_log` removes them on ``--resume``
(rows the resumed run writes again), so no step appears twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the log at ``path`` as one line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _row(line: str) -> dict[str, Any] | None:
    """The row on ``line``, or None for a line that is not one (e.g. cut short by a kill)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def cut_log(path: Path, step: int) -> tuple[list[dict[str, Any]], int]:
    """Keep only the rows of ``path`` up to ``step``; returns (kept rows, lines removed).

    Lines that are not rows (a line cut short by a kill) go too. The file is
    rewritten atomically (a temporary file, then ``os.replace``) and only when
    something is removed; a missing file stays missing.
    """
    if not path.is_file():
        return [], 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [(line, r) for line, r in zip(lines, map(_row, lines)) if r is not None and r["step"] <= step]
    removed = len(lines) - len(kept)
    if removed:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line, _ in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return [r for _, r in kept], removed
