"""A small synthetic detection dataset in COCO format ("shapes"), for tests and smoke runs.

Each image is a textured background (smooth noise, a gradient or stripes), some
unannotated clutter (thin lines, small dots), and 1..8 filled shapes from five
classes (circle, square, triangle, cross, ring) with random colours, sizes and
rotations. Shapes may overlap: they are placed one after another, and a candidate
that would leave an earlier shape less than ``MIN_VISIBLE`` of its own area visible
is rejected and re-drawn elsewhere. So every drawn shape is annotated, and every
annotated shape is at least 40% visible (a few 1-pixel clutter lines drawn on top
aside). Boxes are the tight (amodal) box of the whole shape mask, ``area`` is its
pixel count.

Everything is drawn from ``np.random.default_rng([seed, split, index])`` and written
without time stamps, so the same seed gives the same bytes for every file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

CLASS_NAMES = ["circle", "square", "triangle", "cross", "ring"]
MIN_VISIBLE = 0.4  # an earlier shape must keep this fraction of its area visible
_SPLITS = ("train", "val")


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Float [s, s, 3] texture: smooth colour noise, a linear gradient or stripes, plus pixel noise."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if kind == 0:
        g = int(rng.integers(2, 7))
        grid = rng.integers(0, 256, (g, g, 3), dtype=np.uint8)
        bg = np.asarray(Image.fromarray(grid).resize((s, s), Image.BILINEAR), dtype=np.float32)
    else:
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        a = rng.uniform(0, math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        if kind == 1:
            t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        else:
            period = rng.uniform(0.05, 0.2)
            t = (np.sin(2 * math.pi * t / period) > 0).astype(np.float32)
        bg = c0 + (c1 - c0) * t[..., None]
    return bg + rng.normal(0, rng.uniform(2, 20), (s, s, 3)).astype(np.float32)


def _shape_mask(rng: np.random.Generator, label: int, s: int) -> np.ndarray:
    """Binary [s, s] mask of one shape (circumradius 5-25% of the side) lying inside the image."""
    r = rng.uniform(0.05, 0.25) * s
    cx, cy = rng.uniform(r, s - r, 2)
    rot = rng.uniform(0, 2 * math.pi)
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)

    def poly(radii: list[float], angles: list[float]) -> list[tuple[float, float]]:
        return [(cx + q * math.cos(rot + a), cy + q * math.sin(rot + a)) for q, a in zip(radii, angles)]

    name = CLASS_NAMES[label]
    if name in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if name == "ring":
            h = r * rng.uniform(0.45, 0.7)
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=0)
    elif name == "square":
        draw.polygon(poly([r] * 4, [k * math.pi / 2 for k in range(4)]), fill=255)
    elif name == "triangle":
        draw.polygon(poly([r] * 3, [k * 2 * math.pi / 3 for k in range(3)]), fill=255)
    else:  # cross: a plus sign with arms of half-width w, inscribed in the circle of radius r
        w = r * rng.uniform(0.2, 0.35)
        ang = math.atan2(w, math.sqrt(r * r - w * w))
        inner = math.hypot(w, w)
        radii, angles = [], []
        for k in range(4):
            base = k * math.pi / 2
            radii += [r, r, inner]
            angles += [base - ang, base + ang, base + math.pi / 4]
        draw.polygon(poly(radii, angles), fill=255)
    return np.asarray(mask) > 0


def _clutter(rng: np.random.Generator, img: Image.Image, n_lines: int, n_dots: int) -> None:
    """Unannotated distractors: 1-px lines and dots of radius 1-2, in random colours."""
    s = img.size[0]
    draw = ImageDraw.Draw(img)
    for _ in range(n_lines):
        xy = [float(v) for v in rng.uniform(0, s, 4)]
        draw.line(xy, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    for _ in range(n_dots):
        x, y = rng.uniform(0, s, 2)
        q = float(rng.uniform(1, 2))
        draw.ellipse([x - q, y - q, x + q, y + q], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))


def make_scene(rng: np.random.Generator, s: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One uint8 [s, s, 3] image and its objects (``label`` 0..4, ``bbox`` xywh, ``area``)."""
    bg = Image.fromarray(np.clip(_background(rng, s), 0, 255).astype(np.uint8))
    _clutter(rng, bg, int(rng.integers(0, 5)), int(rng.integers(0, 7)))
    img = np.asarray(bg).copy()
    owner = np.full((s, s), -1, dtype=np.int64)  # index of the shape seen at each pixel
    visible: list[int] = []
    areas: list[int] = []
    objects: list[dict[str, Any]] = []
    for _ in range(1 + int(rng.binomial(7, 3 / 7))):  # 1..8 shapes, 4 on average
        for _try in range(20):
            label = int(rng.integers(len(CLASS_NAMES)))
            m = _shape_mask(rng, label, s)
            area = int(m.sum())
            if area < 4:
                continue
            if objects:  # would any earlier shape drop below MIN_VISIBLE?
                lost = np.bincount(owner[m] + 1, minlength=len(objects) + 1)[1:]
                if np.any(np.asarray(visible) - lost < MIN_VISIBLE * np.asarray(areas)):
                    continue
                visible = list(np.asarray(visible) - lost)
            break
        else:
            continue
        colour = rng.integers(0, 256, 3)
        for _ in range(10):  # keep the shape distinguishable from what lies under it
            if np.abs(img[m].mean(0) - colour).sum() >= 90:
                break
            colour = rng.integers(0, 256, 3)
        img[m] = colour
        owner[m] = len(objects)
        visible.append(area)
        areas.append(area)
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        objects.append({"label": label, "bbox": bbox, "area": area})
    out = Image.fromarray(img)
    _clutter(rng, out, int(rng.integers(0, 3)), int(rng.integers(0, 4)))
    return np.asarray(out), objects


def generate_synthetic(
    out_dir: str | Path,
    n_train: int = 2000,
    n_val: int = 200,
    seed: int = 0,
    image_size: int = 128,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the shapes dataset under ``out_dir`` in COCO layout and return per-split counts.

    Layout: ``{train,val}/NNNNNN.png`` and ``annotations/{train,val}.json`` (category
    ids 1..5, image and annotation ids from 1). Returns
    ``{"train": {"images", "boxes"}, "val": {...}, "class_names": [...]}``.
    """
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]
    summary: dict[str, Any] = {"class_names": list(CLASS_NAMES)}
    bar = tqdm(total=n_train + n_val, desc="synthetic shapes", unit="img", disable=not progress)
    for split_idx, (split, n) in enumerate(zip(_SPLITS, (n_train, n_val))):
        (out_dir / split).mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(n):
            rng = np.random.default_rng([seed, split_idx, i])
            pixels, objects = make_scene(rng, image_size)
            name = f"{i + 1:06d}.png"
            Image.fromarray(pixels).save(out_dir / split / name, format="PNG", compress_level=1)
            images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
            for o in objects:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": o["label"] + 1,
                             "bbox": o["bbox"], "area": o["area"], "iscrowd": 0})
            bar.update()
        dataset = {"info": {"description": f"drmm synthetic shapes, seed {seed}"}, "licenses": [],
                   "images": images, "annotations": anns, "categories": categories}
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(dataset, sort_keys=True))
        summary[split] = {"images": len(images), "boxes": len(anns)}
    bar.close()
    return summary
