"""Image files in, detections out, without torch: reading, collecting, naming outputs, the JSON record.

Shared by ``drmm predict`` (torch) and ``drmm predict --onnx`` (onnxruntime only);
imports only the standard library, numpy and PIL.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

logger = logging.getLogger("drmm.predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as an upright RGB uint8 PIL image, whatever its mode (16-bit scaled, not clipped)."""
    with Image.open(path) as f:
        img = ImageOps.exif_transpose(f)  # a loaded copy, so the file can be closed
    return as_rgb(img)


def as_rgb(img: Image.Image) -> Image.Image:
    """An image of any PIL mode as RGB uint8, as :func:`load_rgb` reads it (16-bit scaled, alpha dropped)."""
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


def out_stem(path: Path, used: set[str]) -> str:
    """``path.stem``, made unique among the outputs of this run (a.jpg and a.png both given)."""
    stem = path.stem
    if stem in used:
        stem = f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        i = 1
        while stem in used:
            stem, i = f"{path.stem}_{i}", i + 1
    used.add(stem)
    return stem


def write_record(out_dir: Path, stem: str, path: Path, size: tuple[int, int], threshold: float,
                 boxes: list, scores: list, labels: list[int], names: list[str]) -> None:
    """``OUT/<stem>.json`` with the kept detections (``labels`` already category ids, ``names`` theirs)."""
    record = {
        "image": str(path), "width": int(size[1]), "height": int(size[0]), "threshold": threshold,
        "boxes": [[round(float(v), 2) for v in b] for b in boxes],
        "scores": [round(float(s), 4) for s in scores],
        "labels": [int(lab) for lab in labels], "names": list(names),
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(record))


def read_or_skip(path: Path, count: int, skipped: list[str]) -> Image.Image | None:
    """:func:`load_rgb`; an unreadable file is an error when it is the only one of ``count``, else logged,
    appended to ``skipped`` and ``None``."""
    try:
        return load_rgb(path)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        if count == 1:
            raise RuntimeError(f"cannot read image {path}: {e}") from e
        logger.warning("skipping unreadable image %s: %s", path, e)
        skipped.append(str(path))
        return None


def readable_images(files: list[Path], skipped: list[str], progress: bool = True) -> Iterator[tuple[Path, Image.Image]]:
    """``(path, RGB image)`` for each of ``files`` that :func:`read_or_skip` reads, with a progress bar for several."""
    for path in tqdm(files, desc="predict", unit="img", disable=not progress or len(files) < 2):
        pil = read_or_skip(path, len(files), skipped)
        if pil is not None:
            yield path, pil
