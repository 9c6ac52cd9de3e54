"""Reading and checking a COCO annotation file before anything trusts it.

Every error is a ``ValueError`` naming the file and the entry (``images[3]``,
``categories[1]``, ...) and saying what to change. What is refused: a file that is
not COCO JSON, ids (image, category, annotation, ``image_id``, ``category_id``)
that are not integers, an image id,
annotation id or category (id or name) listed twice. Annotations without an ``id``
get fresh ones (:func:`assign_missing_ids`; ids identify ground truth in COCOeval).
:func:`leaves_folder` tells an image ``file_name`` that is absolute or climbs out
of the image folder with ``..``; the dataset refuses those unless allowed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

REQUIRED = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id"), "categories": ("id", "name")}
"""The keys every entry of each list must have."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_unique(ann_file: Path, items: list[dict[str, Any]], list_name: str, key: str, what: str) -> None:
    """No two entries of ``items`` share ``item[key]``; the error names both entries."""
    first: dict[Any, int] = {}
    for i, item in enumerate(items):
        v = item.get(key)
        if v is None:
            continue
        if v in first:
            j = first[v]
            raise ValueError(f"{ann_file}: {list_name}[{i}] {item!r:.120} repeats the {key} {v!r} of "
                             f"{list_name}[{j}] {items[j]!r:.120}; {what}")
        first[v] = i


def load_annotations(ann_file: str | Path) -> dict[str, Any]:
    """The checked contents of a COCO annotation file (``annotations`` defaults to an empty list)."""
    ann_file = Path(ann_file)
    try:
        with open(ann_file, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ann_file}: not valid JSON: {e}") from e
    return check_annotations(d, ann_file)


def check_annotations(d: Any, ann_file: str | Path) -> dict[str, Any]:
    """``d`` (a COCO dict, read from a file or built in memory) checked; ``ann_file`` names it in errors."""
    if not isinstance(d, dict):
        raise ValueError(f"{ann_file}: not a COCO annotation file (top level is {type(d).__name__}, not an object)")
    d.setdefault("annotations", [])
    for key, fields in REQUIRED.items():
        items = d.get(key)
        if not isinstance(items, list):
            raise ValueError(f"{ann_file}: not a COCO annotation file (missing list {key!r})")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or any(k not in item for k in fields):
                raise ValueError(f"{ann_file}: not a COCO annotation file ({key}[{i}] has not all of {fields}: "
                                 f"{item!r:.200})")
    if not d["categories"]:
        raise ValueError(f"{ann_file}: no categories")
    id_keys = {"images": ("id",), "categories": ("id",), "annotations": ("id", "image_id", "category_id")}
    for key, keys in id_keys.items():
        for i, item in enumerate(d[key]):
            for k in keys:
                if k in item and not _is_int(item[k]):
                    raise ValueError(f"{ann_file}: {key}[{i}] has {k} {item[k]!r}; ids must be integers")
    for i, im in enumerate(d["images"]):
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise ValueError(f"{ann_file}: images[{i}] has file_name {im['file_name']!r}; expected a file name")
    for i, c in enumerate(d["categories"]):
        if not isinstance(c["name"], str):
            raise ValueError(f"{ann_file}: categories[{i}] has name {c['name']!r}; expected a string")
    _check_unique(ann_file, d["images"], "images", "id", "give every image its own id")
    _check_unique(ann_file, d["annotations"], "annotations", "id", "give every annotation its own id")
    once = "list each category once (one id and one name per category)"
    _check_unique(ann_file, d["categories"], "categories", "id", once)
    _check_unique(ann_file, d["categories"], "categories", "name", once)
    return d


def assign_missing_ids(annotations: list[dict[str, Any]]) -> int:
    """Give annotations without an ``id`` fresh ones above the largest id; returns how many."""
    missing = [a for a in annotations if "id" not in a]
    start = max((a["id"] for a in annotations if "id" in a), default=0) + 1
    for k, a in enumerate(missing):
        a["id"] = start + k
    return len(missing)


def leaves_folder(file_name: str) -> bool:
    """Whether ``file_name`` is absolute or climbs out of its folder with ``..`` (checked as written)."""
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
        return True
    parts = os.path.normpath(file_name.replace("\\", "/")).split("/")
    return parts[0] == ".."
