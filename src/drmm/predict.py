"""Run a trained checkpoint on image files and write annotated PNGs and JSON.

For each input image ``<stem>.<ext>`` it writes ``OUT/<stem>.png`` (detections
scoring >= ``threshold`` drawn in the paper's colours) and ``OUT/<stem>.json``::

    {"image": path, "width": W, "height": H, "threshold": t,
     "boxes": [[x0, y0, x1, y1], ...],   # original pixel coordinates
     "scores": [...], "labels": [...],   # dataset category ids (checkpoint "cat_ids")
     "names": [...]}                     # class names

Images are read with :func:`drmm.data.load_rgb` (EXIF rotation, any PIL mode) and
detected by :meth:`drmm.DRMM.predict`, the one path from an image to detections that
the Python object and this command share.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .api import DRMM
from .image_files import collect_images, out_stem, readable_images, write_record
from .plotting import draw_detections, save_image_png

logger = logging.getLogger("drmm.predict")




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
    raw_scores: bool = False,
    calibrator: str | Path | None = None,
) -> dict:
    """Detect objects in images and folders of images; see the module doc for the outputs.

    PNGs of images smaller than ``min_side`` are drawn enlarged by an integer factor;
    the JSON always holds original-image coordinates.

    An unreadable file is an error naming it when it is the only image; among several
    it is skipped with a warning and counted. Scores are calibrated by the checkpoint's calibrator
    (``drmm calibrate``) or the JSON file ``calibrator``; ``raw_scores``: the model's own. Returns
    ``{"images": written, "skipped": [unreadable paths], "detections": total kept, "outputs": [png paths],
    "calibrator": the calibrator applied or None}``.
    """
    files = collect_images(inputs, recursive)
    if not files:
        raise FileNotFoundError("no input images given")
    model = DRMM.from_checkpoint(weights, device=device, raw_scores=raw_scores, calibrator=calibrator)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    used: set[str] = set()
    skipped: list[str] = []
    outputs: list[Path] = []
    total = 0
    for path, pil in readable_images(files, skipped, progress):
        pixels = np.array(pil, dtype=np.uint8)  # decoded once: detected and drawn
        found = model.predict(pixels)[0]  # every top-k detection; those >= threshold are drawn and saved
        det = {"boxes": torch.from_numpy(found.boxes), "scores": torch.from_numpy(found.scores),
               "labels": torch.from_numpy(found.labels)}
        keep = found.scores >= threshold
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        stem = out_stem(path, used)
        drawn = draw_detections(*_enlarged(image, det, min_side), model.class_names, threshold=threshold)
        save_image_png(drawn, out_dir / f"{stem}.png")
        write_record(out_dir, stem, path, tuple(image.shape[1:]), threshold, found.boxes[keep].tolist(),
                     found.scores[keep].tolist(), found.category_ids[keep].tolist(),
                     [n for n, k in zip(found.class_names, keep) if k])
        outputs.append(out_dir / f"{stem}.png")
        total += int(keep.sum())
    if not outputs:
        raise RuntimeError(f"none of the {len(files)} images could be read (e.g. {skipped[0]})")
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d", len(skipped), len(files))
    return {"images": len(outputs), "skipped": skipped, "detections": total, "outputs": outputs,
            "calibrator": None if model.raw_scores else model.calibrator}
