"""A COCO-format dataset of COCO-sized JPEGs with the built-in synthetic scenes (``drmm synth`` content).

Each image is a ``drmm synth`` scene drawn at the long side and resized to ``H x W``
(boxes scaled with it), saved as a JPEG (quality 90, as COCO's photos roughly are).
``--classes 80`` declares COCO's 80 categories (the five shapes use the first five), so
a model trained on it has COCO's class count. Used by ``data_loading.py`` and the
GPU suite's long training runs.

    python benchmarks/coco_jpegs.py OUT [--train 64] [--val 0] [--size 480x640] [--classes 80] [--workers 8]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from drmm.data.synthetic import CLASS_NAMES, make_scene


def _render(job: tuple[Path, int, int, int, int, int]) -> tuple[str, list[dict[str, Any]]]:
    path, seed, split, index, h, w = job
    s = max(h, w)
    pixels, objects = make_scene(np.random.default_rng([seed, split, index]), s)
    Image.fromarray(pixels).resize((w, h), Image.BILINEAR).save(path, format="JPEG", quality=90)
    for o in objects:
        x, y, bw, bh = o["bbox"]
        o["bbox"] = [x * w / s, y * h / s, bw * w / s, bh * h / s]
        o["area"] = o["area"] * w * h / s**2
    return path.name, objects


def make_coco_jpegs(root: str | os.PathLike, n_train: int, n_val: int = 0, size: tuple[int, int] = (480, 640),
                    classes: int = 80, seed: int = 0, workers: int | None = None) -> Path:
    """Write ``root/{train,val}/*.jpg`` and ``root/annotations/{train,val}.json``; returns ``root``.

    Reuses a folder already written with the same arguments (``root/made.json``).
    """
    root = Path(root)
    spec = {"n_train": n_train, "n_val": n_val, "size": list(size), "classes": classes, "seed": seed}
    if (root / "made.json").is_file() and json.loads((root / "made.json").read_text()) == spec:
        return root
    names = list(CLASS_NAMES) + [f"unused{i}" for i in range(len(CLASS_NAMES), classes)]
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names[:classes])]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    h, w = size
    with multiprocessing.Pool(workers or os.cpu_count()) as pool:
        for split_index, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            if n == 0:
                continue
            (root / split).mkdir(exist_ok=True)
            jobs = [(root / split / f"{i + 1:06d}.jpg", seed, split_index, i, h, w) for i in range(n)]
            images, anns = [], []
            for i, (name, objects) in enumerate(pool.imap(_render, jobs, chunksize=4)):
                images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
                anns += [{"id": len(anns) + k + 1, "image_id": i + 1, "category_id": o["label"] + 1,
                          "bbox": o["bbox"], "area": o["area"], "iscrowd": 0} for k, o in enumerate(objects)]
            data = {"images": images, "annotations": anns, "categories": categories}
            (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    (root / "made.json").write_text(json.dumps(spec))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--val", type=int, default=0)
    ap.add_argument("--size", default="480x640", help="HxW")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    root = make_coco_jpegs(args.out, args.train, args.val, (h, w), args.classes, args.seed, args.workers)
    print(f"{root}: {args.train} train / {args.val} val JPEGs of {h}x{w}, {args.classes} categories")


if __name__ == "__main__":
    main()
