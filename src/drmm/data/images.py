"""Reading image files: decoding to RGB, a cheap check of a file's header, one-line errors.

:func:`check_image` opens a file and runs PIL's ``verify()`` without decoding the
pixels: for PNG that reads the chunks and their checksums (a truncated file fails),
for JPEG only the header (a JPEG truncated past its header still fails later, at
decoding). :class:`UnreadableImageError` is the error for a file that cannot be
read: its message is one line naming the file and the remedy, also when it is
raised in a DataLoader worker process (see the class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SKIP_OPTION = "pass --set data.skip_unreadable=true to skip unreadable images"
"""How a command-line user skips unreadable images (``skip_unreadable=True`` in Python)."""
SKIP_REMEDY = f"fix or remove the file, or {SKIP_OPTION}"
"""What a user can do about an unreadable image."""
NO_SUCH_FILE = "no such file"
""":func:`check_image`'s reason for a missing file."""


def _own_line(message: str) -> str:
    """``message``, or this error's own line when it is torch's re-raised worker traceback."""
    if not message.startswith("Caught UnreadableImageError"):
        return message
    marker = "UnreadableImageError: "
    for line in reversed(message.rstrip().splitlines()):
        if marker in line:
            return line.split(marker, 1)[1]
    return message


class UnreadableImageError(RuntimeError):
    """An image file that cannot be read; ``str(error)`` is one line naming the file and the remedy.

    A DataLoader re-raises a worker's exception in the main process as
    ``type(e)(text of the worker's traceback)``; this constructor keeps only the
    error's own line of that text, so the main process sees the same one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_own_line(message))


def _reason(error: BaseException | str) -> str:
    """A short one-line reason for a failed read."""
    if isinstance(error, FileNotFoundError):
        return NO_SUCH_FILE
    if isinstance(error, UnidentifiedImageError):
        return "not an image file (or a format PIL cannot read)"
    return " ".join(str(error).split()) or type(error).__name__


def unreadable(path: str | Path, error: BaseException | str) -> UnreadableImageError:
    """The error for ``path``: ``cannot read image PATH: REASON (remedy)`` on one line."""
    return UnreadableImageError(f"cannot read image {path}: {_reason(error)} ({SKIP_REMEDY})")


def check_image(path: str | Path) -> str | None:
    """Why ``path`` is not a readable image (a short reason), or None; reads no pixel data.

    Missing files (:data:`NO_SUCH_FILE`), files PIL does not recognise and (for PNG)
    truncated or corrupt chunks are found; damaged compressed pixel data is only
    found by decoding.
    """
    try:
        with Image.open(path) as f:
            f.verify()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return _reason(e)
    return None


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
