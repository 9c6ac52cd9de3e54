"""A dataset in any layout (COCO, YOLO, VOC) written as plain COCO JSON or as YOLO (``drmm convert-dataset``).

Each split (``train``, ``val``) is read as the training command reads it
(:mod:`drmm.data.formats`: the same checks, ``data.skip_invalid`` and
``data.skip_unreadable`` honoured) and written with its images copied (or linked):

* ``coco``: ``OUT/annotations/SPLIT.json`` and ``OUT/SPLIT/FILE`` (``drmm train --data OUT``);
* ``yolo``: ``OUT/data.yaml`` (``names``: the categories in sorted id order, class index
  = position), ``OUT/images/SPLIT/FILE`` and ``OUT/labels/SPLIT/FILE.txt``. Boxes are
  clipped to the image and written with 8 decimals (a COCO -> YOLO -> COCO round trip
  keeps them within 1e-7 of the image size); crowd regions, which YOLO cannot say, are
  left out and counted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .annotations import check_annotations, leaves_folder, load_annotations
from .formats import LAYOUTS, check_format, detect_format, load_split, resolve_split
from .yolo import write_data_yaml, write_yolo_split

SPLITS = ("train", "val")
"""The splits a conversion looks for."""
TARGETS = ("coco", "yolo")
"""What ``drmm convert-dataset --to`` writes."""


def read_dataset(src: str | Path, cfg: Any) -> dict[str, tuple[dict[str, Any], Path]]:
    """``{split: (checked COCO dict, image folder)}`` of every split of ``src`` (``cfg``: its DataConfig)."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    fmt = check_format(cfg.format) or detect_format(src)
    cfg = dataclasses.replace(cfg, format=fmt)
    splits: dict[str, tuple[dict[str, Any], Path]] = {}
    for split in SPLITS:
        found = resolve_split(src, split, fmt)
        if found is None or not found[0].is_file():
            continue
        ann, images = found
        converted = load_split(cfg, ann, images)
        d = load_annotations(ann) if converted is None else check_annotations(converted[0], ann)
        for i, im in enumerate(d["images"]):
            if leaves_folder(im["file_name"]):
                raise ValueError(f"{ann}: images[{i}] has file_name {im['file_name']!r}, outside the image folder "
                                 f"{images}; convert-dataset copies images from inside it: move the file")
        splits[split] = (d, images)
    if not splits:
        raise FileNotFoundError(f"{src}: no train or val split found ({fmt}; expected {LAYOUTS})")
    cats = {s: [(c["id"], c["name"]) for c in sorted(d["categories"], key=lambda c: c["id"])]
            for s, (d, _) in splits.items()}
    if len({tuple(c) for c in cats.values()}) > 1:
        raise ValueError(f"{src}: the splits have different categories {cats}; a converted dataset has one set")
    return splits


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"cannot read image {src}: no such file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _link(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"cannot read image {src}: no such file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(os.path.abspath(src))


def write_coco_split(d: dict[str, Any], image_dir: Path, out: Path, split: str,
                     place: Callable[[Path, Path], None]) -> dict[str, int]:
    """``out/annotations/SPLIT.json`` (``d`` as plain COCO) and the images under ``out/SPLIT/``."""
    for im in d["images"]:
        place(image_dir / im["file_name"], out / split / im["file_name"])
    keep = ("info", "licenses", "images", "annotations", "categories")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"{split}.json").write_text(json.dumps({k: d[k] for k in keep if k in d}))
    return {"images": len(d["images"]), "boxes": len(d["annotations"])}


def convert_dataset(src: str | Path, to: str, out: str | Path, cfg: Any, *,
                    symlink: bool = False) -> dict[str, dict[str, int]]:
    """Write the dataset ``src`` (layout ``cfg.format`` or detected) as ``to`` (coco | yolo) into the new folder ``out``.

    ``symlink``: link the images instead of copying them. Returns per split what was written.
    """
    if to not in TARGETS:
        raise ValueError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: give a new output folder")
    splits = read_dataset(src, cfg)
    place = _link if symlink else _copy
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, (d, images) in splits.items():
        write = write_coco_split if to == "coco" else write_yolo_split
        summary[split] = write(d, images, out, split, place)
    if to == "yolo":
        d = next(iter(splits.values()))[0]
        write_data_yaml(out, list(splits), [c["name"] for c in sorted(d["categories"], key=lambda c: c["id"])])
    return summary
