"""safetensors files: read by safetensors itself (no code; sizes checked by its loader), at most the archive
cap on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from .caps import MAX_ARCHIVE_BYTES, REDOWNLOAD, _size

# safetensors' own cap on the JSON header
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def is_safetensors_file(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length (at most
    safetensors' 100 MB), then a JSON object. (A zip archive's byte 8 is its compression method, never ``{``; a
    file cut short is left to `read_safetensors_file` to name.)"""
    with open(path, "rb") as f:
        head = f.read(9)
    return (
        len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_SAFETENSORS_HEADER
    )


def read_safetensors_file(path: Path, max_total_bytes: int = MAX_ARCHIVE_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (an official checkpoint re-saved in that format), at most
    ``max_total_bytes`` on disk."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    if size > max_total_bytes:
        raise ValueError(
            f"{path}: {_size(size)} exceeds the cap of {_size(max_total_bytes)} for a checkpoint."
        )
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: damaged safetensors file ({err}). {REDOWNLOAD}") from err
