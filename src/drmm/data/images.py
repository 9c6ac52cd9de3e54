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


from ..image_files import load_rgb  # noqa: E402,F401  (torch-free home, re-exported)
