"""COCO annotation and COCO results files as arrays, for the calibration metrics; every bad entry named.

A results file is what every COCO detector writes: a JSON list of
``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``. :func:`load_detections`
checks it entry by entry against the annotation file. The wrong JSON shape (not a
list, an entry that is not an object or lacks a key, a value that is not a number)
is always an error naming the file and the entry's index. Entries that are well
formed but unusable (an image or category id the annotation file does not have, a
box with a NaN / infinite value or a negative width or height, a score that is NaN
or outside [0, 1]) are an error too, unless ``skip_invalid``: then they are left out
and counted per reason in ``Detections.skipped``.

Ground truth is kept exactly as in the annotation file (no clipping, crowd regions
kept and flagged); only annotations whose box is not four finite numbers with a
non-negative width and height, or whose category is not listed, are left out and
counted (``GroundTruth.skipped``), as the data loader does.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

SKIP_REASONS = ("unknown_image", "unknown_category", "bad_box", "bad_score")
"""Why a well-formed detection can be unusable (the keys of ``Detections.skipped``)."""


@dataclass
class GroundTruth:
    """An annotation file's boxes per (image id, category id): ``boxes [G, 4]`` xywh float64, ``crowd [G]`` bool."""

    image_ids: set[int]
    categories: dict[int, str]  # category id -> name, in id order
    boxes: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    crowd: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = "annotations"

    def subset(self, image_ids: Iterable[int]) -> GroundTruth:
        """The ground truth of ``image_ids`` only (an evaluation of part of the file: misses counted there only)."""
        keep = set(int(i) for i in image_ids) & self.image_ids
        return GroundTruth(keep, dict(self.categories), {k: v for k, v in self.boxes.items() if k[0] in keep},
                           {k: v for k, v in self.crowd.items() if k[0] in keep}, dict(self.skipped), self.source)

    def get(self, image_id: int, cat_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes [G, 4], crowd [G])`` of one image and category (empty when it has none)."""
        key = (image_id, cat_id)
        if key not in self.boxes:
            return np.zeros((0, 4)), np.zeros(0, dtype=bool)
        return self.boxes[key], self.crowd[key]


@dataclass
class Detections:
    """A results file's usable entries as aligned arrays, in file order."""

    image_id: np.ndarray  # [N] int64
    category_id: np.ndarray  # [N] int64
    boxes: np.ndarray  # [N, 4] float64, xywh
    scores: np.ndarray  # [N] float64 in [0, 1]
    index: np.ndarray  # [N] int64: each entry's position in the file
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = "detections"

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep: np.ndarray) -> Detections:
        """The entries where ``keep [N]`` (bool) is true, in the same order (``skipped`` kept)."""
        return Detections(self.image_id[keep], self.category_id[keep], self.boxes[keep], self.scores[keep],
                          self.index[keep], dict(self.skipped), self.source)


def read_json(path: str | Path) -> Any:
    """A JSON file's content; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _box_ok(bbox: Any) -> bool:
    """Four finite numbers with a non-negative width and height."""
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
            and all(math.isfinite(v) for v in bbox) and bbox[2] >= 0 and bbox[3] >= 0)


def ground_truth_from_coco(d: Any, source: str = "annotations") -> GroundTruth:
    """:class:`GroundTruth` from a COCO annotation dict (``images``, ``categories``, ``annotations``)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: not a COCO annotation file (top level is {type(d).__name__}, not an object)")
    for key in ("images", "categories"):
        if not isinstance(d.get(key), list):
            raise ValueError(f"{source}: not a COCO annotation file (missing list {key!r})")
    anns = d.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError(f"{source}: 'annotations' is not a list")
    for key, fields in (("images", ("id",)), ("categories", ("id",)), ("annotations", ("image_id", "category_id"))):
        for i, item in enumerate(d.get(key, [])):
            if not isinstance(item, dict) or any(k not in item for k in fields):
                raise ValueError(f"{source}: {key} entry {i} is not an object with {', '.join(fields)}")
    categories = {int(c["id"]): str(c.get("name", c["id"])) for c in sorted(d["categories"], key=lambda c: c["id"])}
    gt = GroundTruth({int(im["id"]) for im in d["images"]}, categories, source=source)
    skipped: Counter = Counter()
    boxes, crowd = defaultdict(list), defaultdict(list)
    for a in anns:
        if a["category_id"] not in categories:
            skipped["unknown_category"] += 1
        elif not _box_ok(a.get("bbox")):
            skipped["bad_box"] += 1
        else:
            key = (int(a["image_id"]), int(a["category_id"]))
            boxes[key].append([float(v) for v in a["bbox"]])
            crowd[key].append(bool(a.get("iscrowd", 0)))
    gt.boxes = {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in boxes.items()}
    gt.crowd = {k: np.asarray(v, dtype=bool) for k, v in crowd.items()}
    gt.skipped = dict(skipped)
    return gt


def load_ground_truth(path: str | Path) -> GroundTruth:
    """:func:`ground_truth_from_coco` of an annotation file."""
    return ground_truth_from_coco(read_json(path), source=str(path))


_KEYS = ("image_id", "category_id", "bbox", "score")


def _problem(entry: dict, gt: GroundTruth) -> tuple[str, str] | None:
    """(reason, message) when a well-formed entry is unusable; None when it is fine."""
    if entry["image_id"] not in gt.image_ids:
        return "unknown_image", f"image_id {entry['image_id']!r} is not an image of {gt.source}"
    if entry["category_id"] not in gt.categories:
        return "unknown_category", f"category_id {entry['category_id']!r} is not a category of {gt.source}"
    if not _box_ok(entry["bbox"]):
        return "bad_box", f"bbox {entry['bbox']!r} is not [x, y, w, h] with finite values and w, h >= 0"
    s = entry["score"]
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        return "bad_score", f"score {s!r} is not in [0, 1]"
    return None


def detections_from_results(results: Any, gt: GroundTruth, source: str = "detections",
                            skip_invalid: bool = False) -> Detections:
    """:class:`Detections` from a COCO results list, checked against ``gt`` (see the module doc)."""
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a JSON list of detections (COCO results format), "
                         f"got {type(results).__name__}")
    rows: list[tuple[int, int, list[float], float, int]] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for i, entry in enumerate(results):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: entry {i} is a {type(entry).__name__}, not an object")
        missing = [k for k in _KEYS if k not in entry]
        if missing:
            raise ValueError(f"{source}: entry {i} has no {', '.join(map(repr, missing))} "
                             f"(a detection needs {', '.join(_KEYS)})")
        if not (isinstance(entry["bbox"], (list, tuple)) and len(entry["bbox"]) == 4
                and all(_is_number(v) for v in entry["bbox"])):
            raise ValueError(f"{source}: entry {i}: bbox {entry['bbox']!r} is not a list of 4 numbers")
        if not _is_number(entry["score"]):
            raise ValueError(f"{source}: entry {i}: score {entry['score']!r} is not a number")
        problem = _problem(entry, gt)
        if problem is not None:
            if not skip_invalid:
                raise ValueError(f"{source}: entry {i}: {problem[1]} (--skip-invalid leaves such entries out "
                                 "and counts them)")
            skipped[problem[0]] += 1
            continue
        rows.append((int(entry["image_id"]), int(entry["category_id"]), [float(v) for v in entry["bbox"]],
                     float(entry["score"]), i))
    return Detections(
        image_id=np.asarray([r[0] for r in rows], dtype=np.int64),
        category_id=np.asarray([r[1] for r in rows], dtype=np.int64),
        boxes=np.asarray([r[2] for r in rows], dtype=np.float64).reshape(-1, 4),
        scores=np.asarray([r[3] for r in rows], dtype=np.float64),
        index=np.asarray([r[4] for r in rows], dtype=np.int64),
        skipped=skipped, source=source)


def load_detections(path: str | Path, gt: GroundTruth, skip_invalid: bool = False) -> Detections:
    """:func:`detections_from_results` of a results file."""
    return detections_from_results(read_json(path), gt, source=str(path), skip_invalid=skip_invalid)
