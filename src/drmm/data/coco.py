"""COCO-format detection dataset: robust annotation cleaning and image decoding.

Boxes are cleaned once at construction (crowd regions dropped, degenerate or
non-finite boxes skipped, boxes clipped to the image) and the counts are logged to
the ``drmm.data`` logger and kept in ``dataset.stats``. Images go through
``ImageOps.exif_transpose`` and any PIL mode (L, RGBA, P, 16-bit, ...) becomes RGB
uint8; boxes are taken to be in the frame of the image as a viewer shows it, i.e.
after the EXIF rotation.

Unreadable images: listed files that do not exist are found at construction (one
``stat`` per image). By default that is an error naming the file; with
``skip_unreadable=True`` they are left out and counted. A file that exists but fails
to decode raises ``RuntimeError`` naming it at access; with ``skip_unreadable=True``
it is logged, counted (in that process) and the next readable image is returned,
so an epoch never dies on one bad file.

:func:`check_class_mapping` checks that a dataset's categories are the ones a
checkpoint was trained on (``drmm eval``, ``drmm reproduce``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from torchvision import tv_tensors

logger = logging.getLogger("drmm.data")

Target = dict[str, Any]


def _load_json(ann_file: Path) -> dict[str, Any]:
    """Read a COCO annotation file, failing with ``ValueError`` naming it if it is not one."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ann_file}: not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{ann_file}: not a COCO annotation file (top level is {type(d).__name__}, not an object)")
    d.setdefault("annotations", [])
    required = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id"), "categories": ("id", "name")}
    for key, fields in required.items():
        items = d.get(key)
        if not isinstance(items, list):
            raise ValueError(f"{ann_file}: not a COCO annotation file (missing list {key!r})")
        for item in items:
            if not isinstance(item, dict) or any(k not in item for k in fields):
                raise ValueError(f"{ann_file}: not a COCO annotation file ({key!r} entry without {fields}: {item!r:.200})")
    if not d["categories"]:
        raise ValueError(f"{ann_file}: no categories")
    return d


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as an upright RGB uint8 PIL image, whatever its mode (16-bit scaled, not clipped)."""
    with Image.open(path) as f:
        img = ImageOps.exif_transpose(f)  # a loaded copy, so the file can be closed
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.min() >= 0 and a.max() <= 65535):
            a = a / 257.0
        else:  # 32-bit int or float data of unknown range: stretch to 0..255
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.round(a).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # drops alpha, expands L / P / CMYK / ...


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset returning ``(image, target)`` for D-RMM.

    ``image`` is float32 [3, H, W] in 0..1; ``target`` has ``boxes`` (float32 [N, 4]
    xyxy pixels), ``labels`` (int64 [N], contiguous 0..C-1 in sorted category id
    order), ``image_id`` (int) and ``orig_size`` ([H, W] as loaded, before
    ``transforms``). ``transforms(image, target)`` sees a ``tv_tensors.Image`` (uint8)
    and ``tv_tensors.BoundingBoxes`` as in torchvision.transforms.v2.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        transforms: Callable[[Any, Target], tuple[Any, Target]] | None = None,
        *,
        skip_empty: bool = True,
        skip_unreadable: bool = False,
        train: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_unreadable = skip_unreadable
        self.train = train

        self.coco = COCO()
        self.coco.dataset = _load_json(self.ann_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        self.class_names: list[str] = [str(c["name"]) for c in cats]
        self._cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        if len(self._cat_to_label) != len(self.cat_ids):
            raise ValueError(f"{self.ann_file}: duplicate category ids")

        keys = ("annotations", "crowd", "degenerate", "nonfinite", "invalid", "unknown_category",
                "clipped", "outside", "images", "images_empty", "skipped_empty", "unreadable")
        self.stats: dict[str, int] = dict.fromkeys(keys, 0)
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.ids: list[int] = []
        missing: list[Path] = []
        for img_id in sorted(self.coco.imgs):
            info = self.coco.imgs[img_id]
            boxes, labels = self._clean(info, self.coco.imgToAnns.get(img_id, []))
            self.stats["images"] += 1
            if len(boxes) == 0:
                self.stats["images_empty"] += 1
                if train and skip_empty:
                    self.stats["skipped_empty"] += 1
                    continue
            if not (self.image_dir / info["file_name"]).is_file():
                missing.append(self.image_dir / info["file_name"])
                continue
            self._targets[img_id] = (boxes, labels)
            self.ids.append(img_id)
        if missing and not skip_unreadable:
            raise FileNotFoundError(
                f"cannot read image {missing[0]}: no such file ({len(missing)} image(s) listed in "
                f"{self.ann_file} are missing; pass skip_unreadable=True to skip them)")
        self.stats["unreadable"] = len(missing)
        self._bad: set[int] = set()
        self._warned_size = False
        logger.info("%s: %d images used, %d classes; %s", self.ann_file, len(self.ids), len(self.cat_ids),
                    ", ".join(f"{k}={v}" for k, v in self.stats.items()))
        if missing:
            logger.warning("%s: skipped %d missing image(s), e.g. %s", self.ann_file, len(missing), missing[0])

    def _clean(self, info: dict[str, Any], anns: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Usable xyxy boxes and labels of one image, counting what is dropped or changed."""
        w, h = info.get("width"), info.get("height")
        boxes, labels = [], []
        for a in anns:
            self.stats["annotations"] += 1
            bbox = a.get("bbox")
            if a.get("iscrowd", 0):
                self.stats["crowd"] += 1
            elif a["category_id"] not in self._cat_to_label:
                self.stats["unknown_category"] += 1
            elif not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                self.stats["invalid"] += 1
            elif not all(math.isfinite(v) for v in bbox):
                self.stats["nonfinite"] += 1
            elif bbox[2] <= 0 or bbox[3] <= 0:
                self.stats["degenerate"] += 1
            else:
                x0, y0, x1, y1 = bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]
                if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
                    c = (min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h))
                    if c[2] <= c[0] or c[3] <= c[1]:
                        self.stats["outside"] += 1
                        continue
                    if c != (x0, y0, x1, y1):
                        self.stats["clipped"] += 1
                    x0, y0, x1, y1 = c
                boxes.append((x0, y0, x1, y1))
                labels.append(self._cat_to_label[a["category_id"]])
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def label_to_cat_id(self, label: int) -> int:
        """Contiguous label (0..C-1) -> the dataset's category id."""
        return self.cat_ids[int(label)]

    def cat_id_to_label(self, cat_id: int) -> int:
        """Dataset category id -> contiguous label (0..C-1)."""
        return self._cat_to_label[int(cat_id)]

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, index: int) -> tuple[tv_tensors.Image, Target]:
        img_id = self.ids[index]
        path = self.image_dir / self.coco.imgs[img_id]["file_name"]
        try:
            img = load_rgb(path)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise RuntimeError(f"cannot read image {path}: {e}") from e
        image = tv_tensors.Image(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))
        h, w = image.shape[-2:]
        info = self.coco.imgs[img_id]
        if not self._warned_size and (info.get("height", h), info.get("width", w)) != (h, w):
            self._warned_size = True
            logger.warning("%s is %dx%d (w x h, after EXIF rotation) but %s says %sx%s; boxes are clipped "
                           "to the image as loaded (warned once)", path, w, h, self.ann_file,
                           info.get("width"), info.get("height"))
        boxes, labels = self._targets[img_id]
        boxes = torch.from_numpy(boxes).clone()
        boxes[:, 0::2].clamp_(0, w)  # the JSON size may be missing or disagree with the file
        boxes[:, 1::2].clamp_(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(labels)[keep],
            "image_id": int(img_id),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        for k in range(len(self.ids)):
            i = (index + k) % len(self.ids)
            if i in self._bad:
                continue
            try:
                image, target = self._load(i)
                break
            except RuntimeError as e:
                if not self.skip_unreadable:
                    raise
                self._bad.add(i)
                self.stats["unreadable"] += 1
                logger.warning("skipping unreadable image: %s", e)
        else:
            raise RuntimeError(f"no readable image left in {self.image_dir} ({self.ann_file})")
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        image = image.as_subclass(torch.Tensor)
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
        return image, target


def collate_fn(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Batch as two lists (images differ in size; the model pads them)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def check_class_mapping(dataset: CocoDetection, ckpt: dict, num_classes: int, weights: str | Path) -> None:
    """The dataset's categories must be the ones the checkpoint was trained on.

    ``ckpt`` is the loaded checkpoint (its ``cat_ids``, when saved, must equal the
    dataset's); without saved ids only the number of classes is compared with
    ``num_classes``. ``weights`` names the checkpoint in the error message.
    """
    ckpt_ids = ckpt.get("cat_ids")
    if ckpt_ids:
        if [int(c) for c in ckpt_ids] != [int(c) for c in dataset.cat_ids]:
            raise ValueError(f"{dataset.ann_file}: category ids {list(dataset.cat_ids)} differ from those the "
                             f"checkpoint {weights} was trained on {list(ckpt_ids)}")
    elif len(dataset.cat_ids) != num_classes:
        raise ValueError(f"{dataset.ann_file} has {len(dataset.cat_ids)} categories but the model in "
                         f"{weights} predicts {num_classes} classes")
