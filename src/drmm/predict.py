"""Run a trained checkpoint on image files and write annotated PNGs and JSON.

For each input image ``<stem>.<ext>`` it writes ``OUT/<stem>.png`` (detections
scoring >= ``threshold`` drawn in the paper's colours) and ``OUT/<stem>.json``::

    {"image": path, "width": W, "height": H, "threshold": t,
     "boxes": [[x0, y0, x1, y1], ...],   # original pixel coordinates
     "scores": [...], "labels": [...],   # dataset category ids (checkpoint "cat_ids")
     "names": [...]}                     # class names

Images are read with :func:`drmm.data.load_rgb` (EXIF rotation, any PIL mode).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import load_rgb
from .models import detector_from_checkpoint
from .plotting import draw_detections, save_image_png

logger = logging.getLogger("drmm.predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def collect_images(inputs: list[str | Path], recursive: bool = False) -> list[Path]:
    """Files named in ``inputs`` plus the images (``IMAGE_EXTENSIONS``) in folders named there.

    Files given explicitly are kept whatever their extension; duplicates are dropped.
    """
    files: list[Path] = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                hint = "" if recursive else " (--recursive also searches sub-folders)"
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {p}{hint}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _out_stem(path: Path, used: set[str]) -> str:
    """``path.stem``, made unique among the outputs of this run (a.jpg and a.png both given)."""
    stem = path.stem
    if stem in used:
        stem = f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        i = 1
        while stem in used:
            stem, i = f"{path.stem}_{i}", i + 1
    used.add(stem)
    return stem


def _enlarged(image: torch.Tensor, det: dict, min_side: int) -> tuple[torch.Tensor, dict]:
    """Small images are drawn enlarged (integer factor, nearest neighbour) so labels stay legible."""
    factor = -(-min_side // max(image.shape[-2:]))  # ceil
    if factor <= 1:
        return image, det
    big = image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return big, {**det, "boxes": det["boxes"] * factor}


def predict(
    weights: str | Path,
    inputs: list[str | Path],
    out_dir: str | Path,
    threshold: float = 0.3,
    device: str | torch.device = "cpu",
    recursive: bool = False,
    progress: bool = True,
    min_side: int = 512,
) -> dict:
    """Detect objects in images and folders of images; see the module doc for the outputs.

    PNGs of images smaller than ``min_side`` are drawn enlarged by an integer factor;
    the JSON always holds original-image coordinates.

    An unreadable file is an error naming it when it is the only image; among several
    it is skipped with a warning and counted. Returns ``{"images": written,
    "skipped": [unreadable paths], "detections": total kept, "outputs": [png paths]}``.
    """
    files = collect_images(inputs, recursive)
    if not files:
        raise FileNotFoundError("no input images given")
    dev = torch.device(device)
    model, ckpt = detector_from_checkpoint(weights, map_location="cpu")
    model.optimize_for_inference().to(dev)
    num_classes = model.cfg.model.num_classes
    cat_ids = [int(c) for c in (ckpt.get("cat_ids") or range(num_classes))]
    names = ckpt.get("class_names") or model.cfg.class_names
    if not names or len(names) != num_classes:
        names = [str(c) for c in cat_ids]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    used: set[str] = set()
    skipped: list[str] = []
    outputs: list[Path] = []
    total = 0
    for path in tqdm(files, desc="predict", unit="img", disable=not progress or len(files) < 2):
        try:
            pil = load_rgb(path)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            if len(files) == 1:
                raise RuntimeError(f"cannot read image {path}: {e}") from e
            logger.warning("skipping unreadable image %s: %s", path, e)
            skipped.append(str(path))
            continue
        image = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
        with torch.inference_mode():
            det = model([image.to(dev).float() / 255])[0]
        det = {k: v.cpu() for k, v in det.items()}
        keep = det["scores"] >= threshold
        boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep].tolist()
        stem = _out_stem(path, used)
        drawn = draw_detections(*_enlarged(image, det, min_side), names, threshold=threshold)
        save_image_png(drawn, out_dir / f"{stem}.png")
        record = {
            "image": str(path), "width": int(image.shape[2]), "height": int(image.shape[1]), "threshold": threshold,
            "boxes": [[round(v, 2) for v in b] for b in boxes.tolist()],
            "scores": [round(s, 4) for s in scores.tolist()],
            "labels": [cat_ids[lab] for lab in labels],
            "names": [names[lab] for lab in labels],
        }
        (out_dir / f"{stem}.json").write_text(json.dumps(record))
        outputs.append(out_dir / f"{stem}.png")
        total += len(labels)
    if not outputs:
        raise RuntimeError(f"none of the {len(files)} images could be read (e.g. {skipped[0]})")
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d", len(skipped), len(files))
    return {"images": len(outputs), "skipped": skipped, "detections": total, "outputs": outputs}
