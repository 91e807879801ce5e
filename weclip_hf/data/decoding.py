"""Decode stored images and masks, naming the file (or the row) of any that cannot be read.

``datasets`` decodes ``datasets.Image`` columns itself, and its errors (``OSError: image file is
truncated``) name no file. The WeCLIP data pipeline therefore reads these columns undecoded
(``datasets.Image(decode=False)``: ``{"bytes", "path"}`` dicts, see `undecoded`) and decodes each value with
`decode_image`, which turns any failure into an `UnreadableImageError` naming the file, column and row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import image_reading

SKIP_HINT = "pass skip_unreadable=True (examples/train.py: --skip_unreadable_images) to skip unreadable files"


class UnreadableImageError(image_reading.UnreadableImageError):
    """An image or mask of a dataset that cannot be decoded. ``source`` names its file (or row) and column; the
    message says how to skip such files."""

    def __init__(self, source: str, reason: str, fix: str = f"fix or remove it, or {SKIP_HINT}"):
        super().__init__(source, reason, fix)


def file_path(value: Any) -> str | None:
    """The file a stored image comes from (``path`` of a ``{"bytes", "path"}`` dict, a path, a PIL image's
    ``filename``), or None for in-memory data."""
    if isinstance(value, dict):
        path = value.get("path")
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
    else:
        path = getattr(value, "filename", None)
    return path or None


# formats PIL reads that are lossy as they are usually saved (PIL cannot tell a lossless JPEG 2000 or AVIF), and the
# TIFF compressions that are
LOSSY_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "JPEG2000": "JPEG 2000", "AVIF": "AVIF", "HEIF": "HEIF"}
LOSSY_TIFF_COMPRESSIONS = {"jpeg": "JPEG", "tiff_jpeg": "JPEG", "webp": "WebP"}


def lossy_storage(value: Any, decoded: Any = None) -> str | None:
    """The lossy format a stored image is kept in (``"JPEG"``, ``"JPEG 2000"``, ``"AVIF"``, ``"HEIF"``, a TIFF with
    JPEG or WebP compression as ``"TIFF with JPEG compression"``), else None, by what is at hand without decoding it
    again: its file's suffix, its bytes' magic number (JPEG's FF D8 FF), or the format PIL read it as (``decoded``:
    the decoded image, if any)."""
    data = value.get("bytes") if isinstance(value, dict) else value
    magic = isinstance(data, (bytes, bytearray)) and data[:3] == b"\xff\xd8\xff"
    suffix = os.path.splitext(file_path(value) or "")[1].lower()
    if magic or suffix in (".jpg", ".jpeg"):
        return "JPEG"
    read_as = getattr(decoded, "format", None)
    if read_as == "TIFF":
        compression = LOSSY_TIFF_COMPRESSIONS.get(decoded.info.get("compression"))
        return f"TIFF with {compression} compression" if compression else None
    return LOSSY_FORMATS.get(read_as)


def describe(value: Any, column: str | None, row: str) -> str:
    """Where a stored image lives, for messages: ``file 'a.png' (column 'image', row 3 of split 'train')``, or
    ``column 'image' of row 3 of split 'train' (stored as bytes, no file path)``; a file that is no dataset's
    (``column`` None: a file of a list) by its path alone, ``file 'a.png'``."""
    path = file_path(value)
    if path:
        return f"file {path!r}" + (f" (column {column!r}, {row})" if column is not None else "")
    return f"column {column!r} of {row} (stored as bytes, no file path)"


def decode_image(value: Any, column: str | None, row: str, feature: Any = None) -> Any:
    """A stored image (``{"bytes", "path"}`` dict, path, or a file's raw bytes: a `datasets.Value("binary")` column)
    -> fully decoded PIL image, as ``datasets`` would decode it (EXIF orientation, ``feature.mode``); nested lists
    (an array column) become a NumPy array, read by the rules of the image processor; PIL images and arrays are
    returned as they are.

    Raises `UnreadableImageError` naming the file (or ``row``) and ``column`` when it cannot be read.
    """
    if isinstance(value, (str, os.PathLike)):
        value = {"bytes": None, "path": os.fspath(value)}
    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    if isinstance(value, (list, tuple)):  # an array column (`datasets.Array3D`, nested lists): read as NumPy
        return _nested_array(value, column, row)
    if not isinstance(value, dict):
        return value
    import datasets

    with image_reading.naming_unreadable(describe(value, column, row), UnreadableImageError):
        return datasets.Image(mode=getattr(feature, "mode", None)).decode_example(value)


def _nested_array(value: list | tuple, column: str, row: str) -> np.ndarray:
    """Nested lists (how ``datasets`` gives an array column's values) -> the NumPy array that the image processor
    reads ([H, W], [H, W, C] or [C, H, W]; uint8 0-255 or floats in [0, 1]); ragged lists raise
    `UnreadableImageError` naming the row and column."""
    try:
        return np.asarray(value)
    except ValueError as err:  # ragged: "setting an array element with a sequence" / "inhomogeneous shape"
        raise UnreadableImageError(describe(value, column, row), f"not an array of pixels ({err})") from err


def undecoded(dataset, columns: Iterable[str | None]):
    """``dataset`` with those of ``columns`` that are decoding ``datasets.Image`` features read undecoded
    (``{"bytes", "path"}`` dicts, the feature's ``mode`` kept), for `decode_image`; other data unchanged."""
    import datasets

    features = getattr(dataset, "features", None)  # None for a stream without declared features
    for column in columns:
        feature = features.get(column) if features and column else None
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(mode=feature.mode, decode=False))
    return dataset


def split_name(dataset) -> str | None:
    """The split a ``datasets`` dataset was loaded as (for messages), or None."""
    split = getattr(dataset, "split", None)
    return str(split) if split is not None else None


def row_name(index: int, split: str | None) -> str:
    """``row 3 of split 'train'`` (``row 3`` when the split is unknown)."""
    return f"row {index}" + (f" of split {split!r}" if split else "")
