"""YOLO datasets (the Ultralytics layout) read as COCO dicts, and COCO dicts written as YOLO.

Layout: ``data.yaml`` with ``names`` (a list, or a mapping ``{index: name}``), an
optional ``path`` (the dataset root, relative to the folder of ``data.yaml``) and
``train`` / ``val`` image folders (relative to the root). The labels of
``.../images/SPLIT/x.jpg`` are in ``.../labels/SPLIT/x.txt``, one object a line,
``class cx cy w h`` normalised to 0..1 by the image size; an image without a label
file has no objects. Class index ``i`` becomes COCO category id ``i`` with its name.

Image sizes come from the file headers (no pixel decoding; EXIF-rotated sizes as a
viewer shows them). A malformed line, a value outside 0..1 or a class index not in
``names`` is an error naming ``FILE:LINE``; ``skip_invalid=True``
(``--set data.skip_invalid=true``) counts and skips such lines instead.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from PIL import Image

from .images import SKIP_OPTION, unreadable

logger = logging.getLogger("drmm.data")

IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
"""Image files a YOLO image folder is searched for (case-insensitive)."""
INVALID_REMEDY = "fix it, or pass --set data.skip_invalid=true to count and skip such labels"
"""What a user can do about a bad label line or annotation file (``skip_invalid=True`` in Python)."""
DATA_YAML = ("data.yaml", "data.yml")
"""The names a YOLO dataset's description file is looked up under."""
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_data_yaml(path: str | Path) -> tuple[dict[int, str], Path, dict[str, Any]]:
    """``(names by class index, dataset root, the parsed file)`` of a ``data.yaml``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO dataset description not found: {path}")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a YOLO data.yaml (expected a mapping with 'names', 'train', 'val')")
    raw = d.get("names")
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: 'names' must be a list of class names or a mapping index: name, got {raw!r:.100}")
    names: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(k, bool) or not (isinstance(k, int) or (isinstance(k, str) and k.isdigit())) or int(k) < 0:
            raise ValueError(f"{path}: names: {k!r} is not a class index (0, 1, ...)")
        if not isinstance(v, str) or not v:
            raise ValueError(f"{path}: names: class {k} has name {v!r}; expected a string")
        names[int(k)] = v
    seen: dict[str, int] = {}
    for k, v in sorted(names.items()):
        if v in seen:
            raise ValueError(f"{path}: names: classes {seen[v]} and {k} are both named {v!r}; name each class once")
        seen[v] = k
    if d.get("nc") is not None and d["nc"] != len(names):
        raise ValueError(f"{path}: nc is {d['nc']!r} but 'names' has {len(names)} classes")
    root = path.parent / str(d["path"]) if d.get("path") else path.parent
    return names, root, d


def split_folder(data_yaml: str | Path, split: str) -> Path | None:
    """The image folder of ``split`` (``train``, ``val``, ...) named in ``data_yaml``; None without that key."""
    _, root, d = read_data_yaml(data_yaml)
    entry = d.get(split)
    if entry is None:
        return None
    if not isinstance(entry, str) or Path(entry).suffix.lower() == ".txt":
        raise ValueError(f"{data_yaml}: {split}: {entry!r:.100}: drmm reads one image folder per split "
                         f"(lists of folders and image list files are not supported): give the folder")
    return root / entry


def label_path(image: str | Path) -> Path:
    """``.../images/SPLIT/x.jpg`` -> ``.../labels/SPLIT/x.txt`` (the last ``images`` folder of the path)."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(os.path.splitext(b.join(os.path.abspath(image).rsplit(a, 1)))[0] + ".txt")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file as a viewer shows it (after the EXIF rotation), from its header."""
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "PNG":  # getexif() of a PNG may decode it; the header's eXIf chunk is enough
            exif = Image.Exif()
            if im.info.get("exif"):
                exif.load(im.info["exif"])
        else:
            exif = im.getexif()
    return (h, w) if exif.get(0x0112) in _ROTATED else (w, h)


def _parse_line(line: str, names: dict[int, str], data_yaml: Path) -> tuple[int, list[float]] | str:
    """``(class, [cx, cy, w, h])`` of one label line, or why it is invalid."""
    parts = line.split()
    if len(parts) != 5:
        return f"expected 5 values 'class cx cy w h', got {len(parts)}: {line.strip()!r:.80}"
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return f"not numbers: {line.strip()!r:.80}"
    if not values[0].is_integer():
        return f"class {parts[0]!r} is not a class index"
    cls = int(values[0])
    if cls not in names:
        return f"class {cls} is not in the names of {data_yaml} (indices {min(names)}..{max(names)})"
    if not all(0 <= v <= 1 for v in values[1:]):
        return f"values {' '.join(parts[1:])} outside 0..1 (YOLO boxes are cx cy w h divided by the image size)"
    return cls, values[1:]


def yolo_to_coco(data_yaml: str | Path, image_dir: str | Path, *, skip_invalid: bool = False,
                 skip_unreadable: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
    """One split (every image under ``image_dir``) as a COCO dict, and the counts of what was skipped.

    Boxes in pixels: ``x = (cx - w/2) * W``, ``y = (cy - h/2) * H``, ``w * W``, ``h * H``.
    Image ids are 1.. in sorted file order, file names relative to ``image_dir``.
    """
    data_yaml, image_dir = Path(data_yaml), Path(image_dir)
    names, _, _ = read_data_yaml(data_yaml)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (named in {data_yaml})")
    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and (p.is_file() or p.is_symlink()))
    stats = {"invalid_labels": 0, "unreadable": 0}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    first_bad: tuple[str, str] | None = None
    for path in files:
        try:
            w, h = image_size(path)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            if not skip_unreadable:
                if isinstance(e, FileNotFoundError):
                    raise FileNotFoundError(f"cannot read image {path}: no such file (restore it, or "
                                            f"{SKIP_OPTION})") from e
                raise unreadable(path, e) from e
            stats["unreadable"] += 1
            logger.warning("skipping unreadable image %s: %s", path, e)
            continue
        img_id = len(images) + 1
        images.append({"id": img_id, "file_name": path.relative_to(image_dir).as_posix(), "width": w, "height": h})
        labels = label_path(path)
        if not labels.is_file():
            continue  # an image without a label file has no objects
        try:
            lines = labels.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            lines, why = [], f"cannot read the label file: {e}"
            if not skip_invalid:
                raise ValueError(f"{labels}: {why} ({INVALID_REMEDY})") from e
            stats["invalid_labels"] += 1
            first_bad = first_bad or (str(labels), why)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parsed = _parse_line(line, names, data_yaml)
            if isinstance(parsed, str):
                if not skip_invalid:
                    raise ValueError(f"{labels}:{n}: {parsed} ({INVALID_REMEDY})")
                stats["invalid_labels"] += 1
                first_bad = first_bad or (f"{labels}:{n}", parsed)
                continue
            cls, (cx, cy, bw, bh) = parsed
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cls,
                         "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                         "area": bw * w * bh * h, "iscrowd": 0})
    if first_bad:
        logger.warning("%s: skipped %d invalid label line(s) or file(s) (data.skip_invalid), e.g. %s: %s",
                       image_dir, stats["invalid_labels"], *first_bad)
    categories = [{"id": k, "name": v} for k, v in sorted(names.items())]
    return {"images": images, "annotations": anns, "categories": categories}, stats


def _yolo_line(label: int, bbox: list[float], w: float, h: float) -> str | None:
    """``class cx cy w h`` of a COCO box clipped to the image, or None when nothing of it is inside."""
    x0, y0 = min(max(bbox[0], 0.0), w), min(max(bbox[1], 0.0), h)
    x1, y1 = min(max(bbox[0] + bbox[2], 0.0), w), min(max(bbox[1] + bbox[3], 0.0), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return f"{label} {(x0 + x1) / 2 / w:.8f} {(y0 + y1) / 2 / h:.8f} {(x1 - x0) / w:.8f} {(y1 - y0) / h:.8f}"


def write_yolo_split(d: dict[str, Any], image_dir: Path, out: Path, split: str, place) -> dict[str, int]:
    """Write one COCO split as ``out/images/SPLIT/...`` (by ``place(src, dst)``) and ``out/labels/SPLIT/*.txt``.

    Category ids become class indices 0..C-1 in sorted id order. Crowd regions (YOLO has
    none) and boxes with nothing inside the image are left out and counted.
    """
    index = {c["id"]: i for i, c in enumerate(sorted(d["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    counts = {"images": 0, "boxes": 0, "crowd_dropped": 0, "outside_dropped": 0}
    written: dict[Path, str] = {}
    for im in d["images"]:
        rel = PurePosixPath(im["file_name"])
        src, dst = image_dir / rel, out / "images" / split / rel
        place(src, dst)
        w, h = (im["width"], im["height"]) if im.get("width") and im.get("height") else image_size(src)
        labels = label_path(dst)
        if labels in written:
            raise ValueError(f"images {written[labels]!r} and {im['file_name']!r} would share the label file "
                             f"{labels}; rename one of them")
        written[labels] = im["file_name"]
        lines = []
        for a in by_image.get(im["id"], []):
            line = None if a.get("iscrowd", 0) else _yolo_line(index[a["category_id"]], a["bbox"], w, h)
            if line is None:
                counts["crowd_dropped" if a.get("iscrowd", 0) else "outside_dropped"] += 1
                continue
            lines.append(line)
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("".join(f"{line}\n" for line in lines))
        counts["images"] += 1
        counts["boxes"] += len(lines)
    return counts


def write_data_yaml(out: Path, splits: list[str], class_names: list[str]) -> Path:
    """``out/data.yaml`` naming ``images/SPLIT`` for each split and the classes (indices 0..C-1)."""
    d: dict[str, Any] = {split: f"images/{split}" for split in splits}
    d["nc"] = len(class_names)
    d["names"] = list(class_names)
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    return path

