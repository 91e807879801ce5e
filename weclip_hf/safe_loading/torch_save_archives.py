"""``torch.save`` archives: checked here (the zip directory, ``data.pkl``, every tensor it declares, the
CRC-32s), then read by ``torch.load(weights_only=True)`` (`load_torch_archive`); a file that is no zip archive
is named for what its first bytes say it is (`_not_an_archive`). "The module docstring" is
`weclip_hf.safe_loading`'s."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .caps import MAX_ARCHIVE_BYTES, MAX_MEMBER_BYTES, REDOWNLOAD
from .pickle_specs import RefusedGlobal, check_specs, named_specs, unpickle_specs
from .zip_archive import check_crcs, check_zip_directory, open_zip

_ZIP_MAGIC = b"PK\x03\x04"  # a zip archive starts with a local file header


def load_torch_archive(
    path: Path, max_total_bytes: int = MAX_ARCHIVE_BYTES, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, once the zip directory, ``data.pkl`` and every tensor
    it declares pass the checks of the module docstring (so torch inflates nothing unchecked).

    Raises:
        ValueError: a file that is not a zip archive (a legacy pre-1.6 ``torch.save`` pickle, whose sizes
            cannot be checked before loading; a truncated archive; an empty file, a web page, a Git LFS pointer or
            another format, each named: `_not_an_archive`), that needs code to load (it is never
            executed), whose bytes do not match their CRC-32 (a corrupted file), or that fails a check (naming
            the member or tensor key).
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            starts_like_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if starts_like_zip:
            raise ValueError(
                f"{path}: the file is truncated or corrupted: it starts as a zip archive but its end (the zip "
                f"directory) is missing or unreadable; {path.stat().st_size:,} bytes on disk. {REDOWNLOAD}"
            )
        raise ValueError(f"{path}: {_not_an_archive(path)}")
    with open_zip(path) as archive:
        infos = check_zip_directory(archive, path, max_total_bytes, max_member_bytes)
        try:
            root, obj, specs = unpickle_specs(archive, infos, path, torchscript=False)
        except RefusedGlobal as err:
            raise ValueError(
                f"{path}: this pickle needs code to load ({err}) and was refused (it is never executed): only "
                "dicts and dense tensors are read. Re-save it as a plain state dict of tensors, e.g. "
                "torch.save(model.state_dict(), path), in a trusted environment."
            ) from err
        check_specs(named_specs(obj, specs, path), infos, root, path, max_total_bytes)
        check_crcs(archive, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{path}: torch.load(weights_only=True) failed after the checks passed ({err})."
        ) from err


def _not_an_archive(path: Path) -> str:
    """What a file that is no zip archive is, from its first bytes, and what to do (for `load_torch_archive`)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return f"the file is empty (0 bytes). {REDOWNLOAD}"
    if head[:1] == b"\x80":  # a pickle's PROTO opcode
        return (
            "not a zip archive but a legacy (pre-1.6) torch.save pickle, which is not read because the sizes it "
            "declares cannot be checked before loading. Re-save it with torch.save(state_dict, path) in a trusted "
            "environment."
        )
    if head.startswith(b"version https://git-lfs"):
        return (
            "a Git LFS pointer (a text file naming the checkpoint), not the checkpoint: fetch the file itself "
            "(git lfs pull, or the repository's download link)."
        )
    if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<":  # after a UTF-8 byte-order mark, if any
        return (
            f"an HTML or XML page ({head.lstrip()[:40]!r}...), not a checkpoint: a download that returned a web "
            f"page (a sign-in, quota or confirmation page) instead of the file. {REDOWNLOAD}"
        )
    return (
        f"neither a torch.save zip archive, a TorchScript archive nor a safetensors file (it starts with "
        f"{head[:16]!r}). {REDOWNLOAD}"
    )
