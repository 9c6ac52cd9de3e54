"""Which dataset layout a folder holds (COCO, YOLO or Pascal VOC) and where each split's files are.

``data.format`` (``coco | yolo | voc``) names the layout; left null, it is detected
from the ``--data`` folder (:func:`detect_format`): COCO has ``annotations/*.json``,
YOLO a ``data.yaml``, VOC ``Annotations/`` and ``ImageSets/Main/``. A split is then an
*annotation source* and an image folder (:func:`resolve_split`): the COCO JSON and
``DIR/SPLIT/``; the ``data.yaml`` and the split's image folder; ``ImageSets/Main/SPLIT.txt``
and ``JPEGImages/``. :func:`load_split` turns a YOLO or VOC source into a COCO dict
(:mod:`drmm.data.yolo`, :mod:`drmm.data.voc`) that :class:`~drmm.data.coco.CocoDetection`
checks and serves like a file, so training, evaluation and calibration are the same for
every layout. A new layout is one module producing that dict and a line here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .voc import voc_to_coco
from .yolo import DATA_YAML, split_folder, yolo_to_coco

FORMATS = ("coco", "yolo", "voc")
"""The values of ``data.format`` (besides null: detected)."""

LAYOUTS = ("COCO: DIR/annotations/{train,val}.json + DIR/{train,val}/; YOLO: DIR/data.yaml; "
           "VOC: DIR/Annotations/*.xml + DIR/ImageSets/Main/{train,val}.txt + DIR/JPEGImages/")
"""The three layouts, as error messages describe them."""


def check_format(fmt: str | None) -> str | None:
    """``fmt`` when it is a known format or None; otherwise an error saying what to type."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"data.format={fmt!r}: expected one of {', '.join(FORMATS)} (or null: detected from --data)")
    return fmt


def data_yaml(root: Path) -> Path | None:
    """The YOLO ``data.yaml`` (or ``data.yml``) of ``root``, if there is one."""
    return next((root / n for n in DATA_YAML if (root / n).is_file()), None)


def detect_format(root: str | Path) -> str:
    """The layout of the dataset folder ``root``: ``coco`` when nothing else is found (its errors name the file)."""
    root = Path(root)
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.json")):
        return "coco"
    if data_yaml(root) is not None:
        return "yolo"
    if (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir():
        return "voc"
    return "coco"


def resolve_split(root: str | Path, split: str, fmt: str | None = None) -> tuple[Path, Path] | None:
    """``(annotation source, image folder)`` of ``split`` under ``root``; None when the layout has no such split.

    ``fmt`` None: :func:`detect_format`. The COCO paths are returned whether they exist or not.
    """
    root = Path(root)
    fmt = check_format(fmt) or detect_format(root)
    if fmt == "coco":
        return root / "annotations" / f"{split}.json", root / split
    if fmt == "yolo":
        yaml_file = data_yaml(root)
        if yaml_file is None:
            raise FileNotFoundError(f"{root}: no data.yaml (data.format=yolo; expected {LAYOUTS})")
        folder = split_folder(yaml_file, split)
        return None if folder is None else (yaml_file, folder)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    return (split_file, root / "JPEGImages") if split_file.is_file() else None


def dataset_split(root: str | Path, split: str, fmt: str | None = None) -> tuple[Path, Path]:
    """:func:`resolve_split`, an error when the split is missing (``drmm eval --data DIR --split S``)."""
    found = resolve_split(root, split, fmt)
    if found is None:
        kind = check_format(fmt) or detect_format(root)
        where = "no key of that name in its data.yaml" if kind == "yolo" else f"no ImageSets/Main/{split}.txt"
        raise FileNotFoundError(f"{root}: no split {split!r} ({kind}: {where})")
    return found


def training_splits(root: str | Path, fmt: str | None = None) -> tuple[Path, Path, Path | None, Path | None]:
    """``(train source, train images, val source, val images)`` of ``root``; no validation when it has no val split."""
    root = Path(root)
    train = resolve_split(root, "train", fmt)
    if train is None or not train[0].is_file():
        missing = root / "annotations/train.json" if train is None else train[0]
        raise FileNotFoundError(f"{missing} not found (expected DIR/annotations/train.json; or a YOLO set: "
                                "DIR/data.yaml; or a VOC set: DIR/Annotations/*.xml + DIR/ImageSets/Main/train.txt)")
    val = resolve_split(root, "val", fmt)
    if val is None or not val[0].is_file():
        return (*train, None, None)
    return (*train, *val)


def split_format(ann: str | Path, fmt: str | None = None) -> str:
    """The format of an annotation source: ``fmt``, or told by the suffix (.yaml/.yml YOLO, .txt VOC, else COCO)."""
    if check_format(fmt):
        return fmt
    suffix = Path(ann).suffix.lower()
    return "yolo" if suffix in (".yaml", ".yml") else "voc" if suffix == ".txt" else "coco"


def load_split(cfg: Any, ann: str | Path, image_dir: str | Path) -> tuple[dict[str, Any], dict[str, int]] | None:
    """A YOLO or VOC split as ``(COCO dict, counts of skipped labels)``; None for COCO (read from its file).

    ``cfg`` is the :class:`~drmm.config.DataConfig` (format, class_names, skip_invalid, skip_unreadable).
    """
    fmt = split_format(ann, cfg.format)
    if fmt == "yolo":
        return yolo_to_coco(ann, image_dir, skip_invalid=cfg.skip_invalid, skip_unreadable=cfg.skip_unreadable)
    if fmt == "voc":
        return voc_to_coco(ann, image_dir, class_names=cfg.class_names, skip_invalid=cfg.skip_invalid)
    return None
