"""Pascal VOC datasets read as COCO dicts.

Layout: ``Annotations/ID.xml`` (one file per image: ``<size>`` and ``<object>``\\ s with
``<name>``, ``<difficult>`` and ``<bndbox>``), ``ImageSets/Main/SPLIT.txt`` (the image
ids of a split, one a line) and ``JPEGImages/ID.jpg``. The categories are the sorted
class names found in the ``train`` split (or ``class_names``, ``--set
data.class_names=[...]``, in label order), with ids 1..C. ``difficult`` objects become
COCO crowd regions (``iscrowd=1``: not trained on, ignored by the evaluation). VOC
corners are 1-based pixel indices: ``(xmin - 1, ymin - 1, xmax, ymax)`` in pixels.

A missing or malformed XML file, one without ``<size>``, an object without a usable
name or box or of a class not among the categories is an error naming ``FILE:LINE``;
``skip_invalid=True`` (``--set data.skip_invalid=true``) counts and skips the object
(or the image, for a file-level problem) instead.
"""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from .yolo import IMAGE_SUFFIXES, INVALID_REMEDY

logger = logging.getLogger("drmm.data")


@dataclass
class Node:
    """An XML element with the line it starts on."""

    tag: str
    line: int
    text: str = ""
    children: list["Node"] = field(default_factory=list)

    def find(self, tag: str) -> "Node | None":
        return next((c for c in self.children if c.tag == tag), None)

    def value(self, tag: str) -> str | None:
        node = self.find(tag)
        return None if node is None else node.text.strip()


def parse_xml(path: Path) -> Node:
    """The root element of an XML file; ``ValueError`` naming ``FILE:LINE`` when it is not well-formed."""
    parser = expat.ParserCreate()
    parser.buffer_text = True
    stack: list[Node] = []
    roots: list[Node] = []

    def start(tag: str, _attrs: dict) -> None:
        node = Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def chars(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler = start, lambda _tag: stack.pop()
    parser.CharacterDataHandler = chars
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid XML: {expat.ErrorString(e.code)}") from e
    return roots[0]


class Invalid(ValueError):
    """A problem of one object (``FILE:LINE: why``) or of a whole file (``file_level``)."""

    def __init__(self, message: str, file_level: bool = False) -> None:
        super().__init__(message)
        self.file_level = file_level


def _number(obj: Node, box: Node, key: str, path: Path) -> float:
    text = box.value(key)
    try:
        v = float(text) if text is not None else float("nan")
    except ValueError:
        v = float("nan")
    if v != v or v in (float("inf"), float("-inf")):
        raise Invalid(f"{path}:{box.line}: <bndbox> of the object on line {obj.line} has {key} {text!r}; "
                      "expected a number")
    return v


def read_voc_xml(path: Path) -> dict[str, Any]:
    """``{"size": (w, h), "filename", "objects": [(name, [x0, y0, x1, y1], difficult, line)], "invalid"}``.

    ``invalid``: why each unusable object is left out (``FILE:LINE: why``). A problem of
    the whole file raises :class:`Invalid` naming the line.
    """
    if not path.is_file():
        raise Invalid(f"{path}: annotation file not found", file_level=True)
    try:
        root = parse_xml(path)
    except ValueError as e:
        raise Invalid(str(e), file_level=True) from e
    size = root.find("size")
    try:
        w, h = (int(float(size.value(k) or "nan")) for k in ("width", "height")) if size is not None else (0, 0)
    except ValueError:
        w = h = 0
    if w <= 0 or h <= 0:
        where = f"{path}:{(size or root).line}"
        raise Invalid(f"{where}: no <size> with a positive <width> and <height>", file_level=True)
    objects, invalid = [], []
    for obj in (c for c in root.children if c.tag == "object"):
        name, box = obj.value("name"), obj.find("bndbox")
        try:
            if not name:
                raise Invalid(f"{path}:{obj.line}: <object> without a <name>")
            if box is None:
                raise Invalid(f"{path}:{obj.line}: <object> {name!r} without a <bndbox>")
            x0, y0, x1, y1 = (_number(obj, box, k, path) for k in ("xmin", "ymin", "xmax", "ymax"))
        except Invalid as e:
            invalid.append(str(e))
            continue
        difficult = (obj.value("difficult") or "0") not in ("0", "false", "False")
        objects.append((name, [x0 - 1, y0 - 1, x1, y1], difficult, obj.line))
    return {"size": (w, h), "filename": root.value("filename"), "objects": objects, "invalid": invalid}


def read_split_ids(split_file: Path) -> list[str]:
    """The image ids of ``ImageSets/Main/SPLIT.txt`` (the first word of each line)."""
    if not split_file.is_file():
        raise FileNotFoundError(f"VOC split file not found: {split_file}")
    return [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_all(ids: list[str], ann_dir: Path, skip_invalid: bool, stats: dict[str, int],
              bad: list[str]) -> list[tuple[str, dict[str, Any]]]:
    records = []
    for img_id in ids:
        try:
            rec = read_voc_xml(ann_dir / f"{img_id}.xml")
        except Invalid as e:
            if not skip_invalid:
                raise ValueError(f"{e} ({INVALID_REMEDY})") from None
            stats["invalid_files"] += 1
            bad.append(str(e))
            continue
        if rec["invalid"] and not skip_invalid:
            raise ValueError(f"{rec['invalid'][0]} ({INVALID_REMEDY})")
        stats["invalid_labels"] += len(rec["invalid"])
        bad.extend(rec["invalid"])
        records.append((img_id, rec))
    return records


def class_names_of(split_file: Path, skip_invalid: bool = False) -> list[str]:
    """The sorted class names of the ``train`` split beside ``split_file`` (or of ``split_file`` without one)."""
    train = split_file.with_name("train.txt")
    source = train if train.is_file() else split_file
    if source != train:
        logger.warning("%s not found: the classes are the names found in %s", train, split_file)
    stats = {"invalid_files": 0, "invalid_labels": 0}
    records = _read_all(read_split_ids(source), split_file.parents[2] / "Annotations", skip_invalid, stats, [])
    return sorted({o[0] for _, r in records for o in r["objects"]})


def _image_name(image_dir: Path, img_id: str, filename: str | None) -> str:
    for name in (f"{img_id}.jpg", filename):
        if name and (image_dir / name).is_file():
            return name
    for p in sorted(image_dir.glob(f"{glob.escape(img_id)}.*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return p.name
    return filename or f"{img_id}.jpg"  # missing: the dataset's image check names it


def voc_to_coco(split_file: str | Path, image_dir: str | Path, *, class_names: list[str] | None = None,
                skip_invalid: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
    """One split (``ImageSets/Main/SPLIT.txt``) as a COCO dict, and the counts of what was skipped."""
    split_file, image_dir = Path(split_file), Path(image_dir)
    ann_dir = split_file.parents[2] / "Annotations"
    stats = {"invalid_labels": 0, "invalid_files": 0}
    bad: list[str] = []
    records = _read_all(read_split_ids(split_file), ann_dir, skip_invalid, stats, bad)
    if class_names:
        names = list(class_names)
    elif split_file.name == "train.txt":
        names = sorted({o[0] for _, r in records for o in r["objects"]})
    else:
        names = class_names_of(split_file, skip_invalid)
    if not names:
        raise ValueError(f"{split_file}: no objects in the training split, so no classes; give them with "
                         "--set data.class_names=[name1,name2,...]")
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    images, anns = [], []
    for img_id, rec in records:
        image_id = len(images) + 1
        w, h = rec["size"]
        images.append({"id": image_id, "file_name": _image_name(image_dir, img_id, rec["filename"]),
                       "width": w, "height": h})
        for name, (x0, y0, x1, y1), difficult, line in rec["objects"]:
            if name not in cat_ids:
                why = (f"{ann_dir / f'{img_id}.xml'}:{line}: class {name!r} is not among the {len(names)} classes "
                       f"{names if len(names) <= 20 else names[:20] + ['...']} (the names of the train split, or "
                       "--set data.class_names=[...])")
                if not skip_invalid:
                    raise ValueError(f"{why}; add it to data.class_names, or pass --set data.skip_invalid=true "
                                     "to count and skip such objects")
                stats["invalid_labels"] += 1
                bad.append(why)
                continue
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_ids[name],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": max(x1 - x0, 0) * max(y1 - y0, 0),
                         "iscrowd": int(difficult)})
    if bad:
        logger.warning("%s: skipped %d invalid annotation file(s) and %d object(s) (data.skip_invalid), e.g. %s",
                       split_file, stats["invalid_files"], stats["invalid_labels"], bad[0])
    categories = [{"id": i, "name": n} for n, i in cat_ids.items()]
    return {"images": images, "annotations": anns, "categories": categories}, stats
