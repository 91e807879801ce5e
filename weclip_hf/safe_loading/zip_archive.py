"""The zip directory of a torch archive, checked before any member is read (`check_zip_directory`: each
member's declared sizes against the caps and the file), its CRC-32s (`check_crcs`; an archive saved without
them has none to check: `skip_absent_crcs`), a damaged archive reported as a ValueError (`open_zip`), and
the members read whole and parsed (`_read_metadata`)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging

from .caps import (
    _RATIO_FLOOR,
    MAX_ARCHIVE_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_MEMBER_BYTES,
    MAX_METADATA_BYTES,
    REDOWNLOAD,
    _size,
)

logger = hf_logging.get_logger(__name__)


def check_zip_directory(
    archive: zipfile.ZipFile,
    path: Path,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> dict[str, zipfile.ZipInfo]:
    """Check the sizes every member declares against the caps and the file; return name -> `ZipInfo`.

    Raises:
        ValueError: naming the file and the first member over a cap (or the total).
    """
    file_bytes = path.stat().st_size
    total, names = 0, set()
    for info in archive.infolist():
        where = f"{path}: archive member {info.filename!r}"
        if info.filename in names:
            raise ValueError(f"{where} appears twice in the zip directory.")
        names.add(info.filename)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(
                f"{where} uses zip compression method {info.compress_type}; torch archives "
                "store members uncompressed (only stored or deflated members are read)."
            )
        if info.header_offset + info.compress_size > file_bytes:
            raise ValueError(
                f"{where} declares {_size(info.compress_size)} of data at offset "
                f"{info.header_offset}, past the end of the file ({_size(file_bytes)})."
            )
        if info.file_size > max_member_bytes:
            raise ValueError(
                f"{where} declares {_size(info.file_size)} uncompressed, over the cap of "
                f"{_size(max_member_bytes)} per member (max_member_bytes)."
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ValueError(
                f"{where} is stored uncompressed but declares {_size(info.file_size)} for "
                f"{_size(info.compress_size)} of data."
            )
        if info.file_size > max(_RATIO_FLOOR, MAX_COMPRESSION_RATIO * info.compress_size):
            raise ValueError(
                f"{where} inflates {info.compress_size:,} bytes to {_size(info.file_size)} "
                f"(over {MAX_COMPRESSION_RATIO}:1): a zip bomb, not a torch archive, whose "
                "members are stored uncompressed."
            )
        total += info.file_size
        if total > max_total_bytes:
            raise ValueError(
                f"{path}: the archive members declare more than {_size(max_total_bytes)} "
                f"uncompressed in all (max_total_bytes; over the cap at {info.filename!r})."
            )
    return {info.filename: info for info in archive.infolist()}


@contextmanager
def open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """``zipfile.ZipFile(path)``, with a damaged archive (directory or member) reported as a ValueError; one
    saved without CRC-32s is read without checking them (`skip_absent_crcs`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            skip_absent_crcs(archive, path)
            yield archive
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ValueError(f"{path}: damaged zip archive ({err}). {REDOWNLOAD}") from err


def skip_absent_crcs(archive: zipfile.ZipFile, path: Path) -> None:
    """Read an archive whose CRC-32s are all 0 without checking them: it was saved without them
    (``torch.serialization.set_crc32_options(False)``, which torch.load reads), and zipfile would call every
    member read damaged. A 0 among real CRC-32s is still checked (and refused)."""
    infos = archive.infolist()
    if infos and all(info.CRC == 0 for info in infos):
        # once: the archive is opened to tell its format, then to read it
        logger.warning_once(
            f"{path}: saved without CRC-32s (torch.serialization.set_crc32_options(False)): its bytes cannot "
            "be checked for corruption (NaN or infinite weights are still refused)."
        )
        for info in infos:
            # zipfile compares the bytes read with a CRC-32 that is not None only
            info.CRC = None


def check_crcs(archive: zipfile.ZipFile, path: Path) -> None:
    """Read every member once and compare it with the CRC-32 the archive stores for it (``testzip``):
    ``torch.load`` does not, and reads flipped bytes as weights.

    Raises:
        ValueError: naming the file and the first member whose bytes changed since they were written.
    """
    damaged = archive.testzip()
    if damaged is not None:
        raise ValueError(
            f"{path}: the file is corrupted: archive member {damaged!r} does not match the CRC-32 written "
            f"with it (its bytes changed after torch.save). {REDOWNLOAD}"
        )


def _read_metadata(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """A member that is read whole and parsed (``data.pkl``, ``code/*.py``), at most `MAX_METADATA_BYTES`."""
    if info.file_size > MAX_METADATA_BYTES:
        raise ValueError(
            f"{path}: archive member {info.filename!r} declares {_size(info.file_size)}; a pickle "
            f"or code file of a checkpoint is under {_size(MAX_METADATA_BYTES)}."
        )
    return archive.read(info)
