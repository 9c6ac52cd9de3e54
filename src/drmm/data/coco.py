"""COCO-format detection dataset: checked annotations, checked image files, robust decoding.

YOLO and VOC splits are served by the same class: :func:`build_dataset` converts them
into a COCO dict first (:mod:`drmm.data.formats`), which is checked like a file.

The annotation file is checked first (:mod:`drmm.data.annotations`: ids, duplicate
entries, image paths leaving the image folder, each an error naming the entry).
Boxes are cleaned once at construction (crowd regions dropped, degenerate or
non-finite boxes and annotations of unknown images or categories skipped, boxes
clipped to the image) and the counts are logged to the ``drmm.data`` logger and
kept in ``dataset.stats``. Images go through ``ImageOps.exif_transpose`` and any
PIL mode (L, RGBA, P, 16-bit, ...) becomes RGB uint8; boxes are taken to be in the
frame of the image as a viewer shows it, i.e. after the EXIF rotation.

Unreadable images: every used image's header is checked at construction
(:func:`~drmm.data.images.check_image`, no pixel decoding; a progress bar on large
sets). A missing or broken file is an error naming it (``FileNotFoundError`` or
:class:`~drmm.data.images.UnreadableImageError`); with ``skip_unreadable=True``
(``--set data.skip_unreadable=true`` on the command line) such images are left out
and counted. A file that passes the check but fails to decode (damaged pixel data)
raises ``UnreadableImageError`` at access, a one-line message also from a DataLoader
worker; with ``skip_unreadable=True`` it is logged, counted (in that process) and
the next readable image is returned, so an epoch never dies on one bad file.

(Whether a dataset's categories are the ones a checkpoint was trained on:
:func:`drmm.checkpoints.check_class_mapping`.)
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision import tv_tensors
from tqdm import tqdm

from ..config import DataConfig
from .annotations import assign_missing_ids, check_annotations, leaves_folder, load_annotations
from .formats import load_split
from .images import NO_SUCH_FILE, SKIP_OPTION, SKIP_REMEDY, UnreadableImageError, check_image, load_rgb, unreadable

logger = logging.getLogger("drmm.data")

Target = dict[str, Any]

PROGRESS_MIN_IMAGES = 1000
"""The header check shows a progress bar from this many images on (and after one second)."""

OUTSIDE_REMEDY = "fix the file name, or pass --set data.allow_outside_paths=true to allow it"
"""What a user can do about an image path leaving the image folder (``allow_outside_paths=True`` in Python)."""


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
        allow_outside_paths: bool = False,
        cache_images: bool = False,
        train: bool = True,
        progress: bool = True,
        annotations: dict[str, Any] | None = None,
    ) -> None:
        """Load and check ``ann_file`` and the images it lists under ``image_dir``.

        ``annotations``: an already-built COCO dict (a YOLO or VOC split converted by
        :mod:`drmm.data.formats`), checked like a file; ``ann_file`` then only names
        its source in messages.

        ``skip_unreadable`` (``--set data.skip_unreadable=true``): leave out and count
        missing or undecodable images instead of failing. ``allow_outside_paths``
        (``--set data.allow_outside_paths=true``): accept absolute image file names and
        ones climbing out of ``image_dir`` with ``..``. ``skip_empty``: leave images
        without boxes out of training (``train=False`` keeps every image).
        ``cache_images`` (``data.cache_images``): keep each decoded image in memory after
        its first use (H x W x 3 bytes each, in every loader process): for small sets.
        ``progress``: a progress bar for the header check of large sets.
        """
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_unreadable = skip_unreadable
        self.train = train
        self._cache: dict[int, torch.Tensor] | None = {} if cache_images else None

        keys = ("annotations", "crowd", "degenerate", "nonfinite", "invalid", "unknown_category", "unknown_image",
                "ids_assigned", "clipped", "outside", "images", "images_empty", "skipped_empty",
                "outside_paths", "checked", "unreadable")
        self.stats: dict[str, int] = dict.fromkeys(keys, 0)
        dataset = load_annotations(self.ann_file) if annotations is None else check_annotations(annotations,
                                                                                                self.ann_file)
        self.stats["ids_assigned"] = assign_missing_ids(dataset["annotations"])
        self._check_paths(dataset["images"], allow_outside_paths)
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        cats = sorted(dataset["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        self.class_names: list[str] = [str(c["name"]) for c in cats]
        self._cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self._count_unknown_images(dataset["annotations"])

        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for img_id in sorted(self.coco.imgs):
            info = self.coco.imgs[img_id]
            boxes, labels = self._clean(info, self.coco.imgToAnns.get(img_id, []))
            self.stats["images"] += 1
            if len(boxes) == 0:
                self.stats["images_empty"] += 1
                if train and skip_empty:
                    self.stats["skipped_empty"] += 1
                    continue
            self._targets[img_id] = (boxes, labels)
        self.ids: list[int] = self._check_files(list(self._targets), skip_unreadable, progress)
        self._bad: set[int] = set()
        self._warned_size = False
        logger.info("%s: %d images used, %d classes; %s", self.ann_file, len(self.ids), len(self.cat_ids),
                    ", ".join(f"{k}={v}" for k, v in self.stats.items()))

    def _check_paths(self, images: list[dict[str, Any]], allow: bool) -> None:
        """Refuse (or, when ``allow``, count) image file names that leave the image folder."""
        outside = [(i, im["file_name"]) for i, im in enumerate(images) if leaves_folder(im["file_name"])]
        self.stats["outside_paths"] = len(outside)
        if outside and not allow:
            i, name = outside[0]
            raise ValueError(f"{self.ann_file}: images[{i}] has file_name {name!r}, outside the image folder "
                             f"{self.image_dir} ({len(outside)} such image(s); {OUTSIDE_REMEDY})")
        if outside:
            logger.warning("%s: %d image file name(s) outside %s, e.g. %r (allowed)", self.ann_file, len(outside),
                           self.image_dir, outside[0][1])

    def _count_unknown_images(self, annotations: list[dict[str, Any]]) -> None:
        """Count (and warn once about) annotations whose ``image_id`` is not in ``images``; they are skipped."""
        unknown = [i for i, a in enumerate(annotations) if a["image_id"] not in self.coco.imgs]
        self.stats["unknown_image"] = len(unknown)
        if unknown:
            i = unknown[0]
            logger.warning("%s: skipped %d annotation(s) of image ids not in 'images', e.g. annotations[%d] "
                           "(image_id %r)", self.ann_file, len(unknown), i, annotations[i]["image_id"])

    def _check_files(self, ids: list[int], skip_unreadable: bool, progress: bool) -> list[int]:
        """The ``ids`` whose image passes :func:`check_image`; the others are an error or skipped and counted."""
        bad: list[tuple[Path, str]] = []
        kept: list[int] = []
        bar = tqdm(ids, desc="checking images", unit="img", delay=1.0,
                   disable=not progress or len(ids) < PROGRESS_MIN_IMAGES)
        for img_id in bar:
            path = self.image_dir / self.coco.imgs[img_id]["file_name"]
            reason = check_image(path)
            if reason is None:
                kept.append(img_id)
            else:
                bad.append((path, reason))
        self.stats["checked"], self.stats["unreadable"] = len(ids), len(bad)
        if bad and not skip_unreadable:
            path, reason = bad[0]
            count = f"{len(bad)} of the {len(ids)} images used from {self.ann_file} cannot be read"
            if reason == NO_SUCH_FILE:
                raise FileNotFoundError(f"cannot read image {path}: {reason} ({count}; restore the file or fix "
                                        f"its file_name, or {SKIP_OPTION})")
            raise UnreadableImageError(f"cannot read image {path}: {reason} ({count}; {SKIP_REMEDY})")
        if bad:
            logger.warning("%s: skipped %d unreadable image(s), e.g. %s: %s", self.ann_file, len(bad), *bad[0])
        return kept

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

    def cat_id_to_label(self, cat_id: int) -> int:
        """Dataset category id -> contiguous label (0..C-1)."""
        return self._cat_to_label[int(cat_id)]

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, index: int) -> tuple[tv_tensors.Image, Target]:
        img_id = self.ids[index]
        path = self.image_dir / self.coco.imgs[img_id]["file_name"]
        pixels = self._cache.get(index) if self._cache is not None else None
        if pixels is None:
            try:
                img = load_rgb(path)
            except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
                raise unreadable(path, e) from e
            pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
            if self._cache is not None:
                self._cache[index] = pixels  # the transforms never write into their input
        image = tv_tensors.Image(pixels)
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
            except UnreadableImageError as e:
                if not self.skip_unreadable:
                    raise
                self._bad.add(i)
                self.stats["unreadable"] += 1
                logger.warning("skipping unreadable image %s: %s", self.coco.imgs[self.ids[i]]["file_name"],
                               e.__cause__ or e)
        else:
            raise RuntimeError(f"no readable image left in {self.image_dir} ({self.ann_file})")
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        image = image.as_subclass(torch.Tensor)
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
        return image, target


def build_dataset(cfg: DataConfig, ann_file: str | Path, image_dir: str | Path,
                  transforms: Callable[[Any, Target], tuple[Any, Target]] | None = None, *, train: bool = True,
                  progress: bool = True) -> CocoDetection:
    """A :class:`CocoDetection` with the data options of ``cfg`` (skip_empty, skip_unreadable, allow_outside_paths).

    ``ann_file`` is a COCO JSON file, a YOLO ``data.yaml`` or a VOC ``ImageSets/Main/SPLIT.txt``
    (``cfg.format``, or told by its suffix: :func:`drmm.data.formats.split_format`); YOLO and
    VOC splits become a COCO dict first, their counted skips added to ``dataset.stats``.
    """
    converted = load_split(cfg, ann_file, image_dir)
    dataset = CocoDetection(ann_file, image_dir, transforms, skip_empty=cfg.skip_empty,
                            skip_unreadable=cfg.skip_unreadable, allow_outside_paths=cfg.allow_outside_paths,
                            cache_images=cfg.cache_images and train, train=train, progress=progress,
                            annotations=None if converted is None else converted[0])
    for key, n in ({} if converted is None else converted[1]).items():
        dataset.stats[key] = dataset.stats.get(key, 0) + n
    return dataset


def collate_fn(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Batch as two lists (images differ in size; the model pads them)."""
    return [b[0] for b in batch], [b[1] for b in batch]
