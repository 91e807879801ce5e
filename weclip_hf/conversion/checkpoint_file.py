"""An official checkpoint file -> the model's state dict: the file read by `weclip_hf.safe_loading` (no code of it
runs, the sizes it declares checked first), the weights entry of a training checkpoint taken, names -> tensors
checked, a DDP ``module.`` prefix removed, and no NaN or infinite weight (`check_finite`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ..json_files import check_regular_file
from ..safe_loading import (
    MAX_ARCHIVE_BYTES,
    MAX_MEMBER_BYTES,
    REDOWNLOAD,
    check_tensor_views,
    is_safetensors_file,
    is_torchscript_archive,
    load_torch_archive,
    read_safetensors_file,
    read_torchscript_archive,
)

logger = hf_logging.get_logger(__name__)

# Where training checkpoints keep the model's weights beside their other entries (optimizer, iteration, ...).
_WEIGHT_ENTRIES = ("state_dict", "model", "model_state_dict")
# How many of those entries deep the weights may lie: official checkpoints nest them at most two deep, and a file
# nesting them thousands deep is searched neither forever nor past Python's recursion limit.
MAX_WEIGHT_NESTING = 8


def _holds_tensors(value: Any, source: str | Path, depth: int, seen: set[int]) -> bool:
    """Whether ``value`` (``depth`` entries down the checkpoint) is a dict with a tensor among its values, or among
    those of one of its `_WEIGHT_ENTRIES` (nested, each dict once: ``seen``, a dict holding itself).

    Raises:
        ValueError: naming ``source``, where the search goes more than `MAX_WEIGHT_NESTING` entries deep.
    """
    if not isinstance(value, dict) or id(value) in seen:
        return False
    seen.add(id(value))
    if any(isinstance(v, torch.Tensor) for v in value.values()):
        return True
    if depth >= MAX_WEIGHT_NESTING and any(isinstance(value.get(k), dict) for k in _WEIGHT_ENTRIES):
        raise ValueError(
            f"{source}: its entries {', '.join(map(repr, _WEIGHT_ENTRIES))} nest more than {MAX_WEIGHT_NESTING} "
            "deep (an official checkpoint's, at most 2): no checkpoint to convert. Save the model's state dict "
            "alone, e.g. torch.save(checkpoint['model'], path)."
        )
    return any(_holds_tensors(value.get(k), source, depth + 1, seen) for k in _WEIGHT_ENTRIES)


def _weights_entry(state: Any, source: str | Path) -> Any:
    """The model's state dict of a checkpoint: ``state`` itself, or the one entry of `_WEIGHT_ENTRIES` that holds
    tensors (nested ones too, each dict once, at most `MAX_WEIGHT_NESTING` deep); the entries left beside it are
    named in a warning."""
    seen = set()
    while isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        if id(state) in seen:  # a dict holding itself (a pickle may): no state dict of weights
            raise ValueError(f"{source}: its entries hold themselves; no state dict of tensors to read.")
        seen.add(id(state))
        entries = [k for k in _WEIGHT_ENTRIES if _holds_tensors(state.get(k), source, len(seen), set())]
        if len(entries) > 1:
            raise ValueError(
                f"{source}: holds several state dicts ({', '.join(map(repr, entries))}): save the model's alone, "
                "e.g. torch.save(checkpoint['model'], path)."
            )
        if not entries:
            break
        others = sorted(map(str, set(state) - {entries[0]}))
        if others:
            logger.warning(
                f"{source}: converting the weights under {entries[0]!r}; left out: {', '.join(others)}."
            )
        state = state[entries[0]]
    return state


def check_state_dict(state: Any, source: str | Path) -> None:
    """Refuse anything but a dict of string keys to tensors, naming what was found."""
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict of tensors, got a {type(state).__name__}.")
    bad_keys = [k for k in state if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(
            f"{source}: expected a state dict with parameter names as keys, got {len(bad_keys)} key(s) of other "
            f"types: {bad_keys[:10]}."
        )
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        nested = [k for k in not_tensors if isinstance(state[k], dict)]
        hint = (
            f" A training checkpoint? Its model's weights may be under {', '.join(map(repr, nested))}: use that "
            "entry alone."
            if nested
            else ""
        )
        raise ValueError(
            f"{source}: expected a state dict of tensors; not tensors: {not_tensors[:10]}.{hint}"
        )


def load_official_checkpoint(
    path: str | Path, *, max_total_bytes: int = MAX_ARCHIVE_BYTES, max_member_bytes: int = MAX_MEMBER_BYTES
) -> dict[str, torch.Tensor]:
    """Read an official checkpoint safely: a ``torch.save`` state dict (`load_torch_archive`:
    ``weights_only=True``, CPU) or an OpenAI TorchScript CLIP archive (`read_torchscript_archive`; no code runs).

    Before anything is inflated, the sizes the archive declares are checked (see the module docstring):
    members against ``max_member_bytes`` each and ``max_total_bytes`` in all (defaults 2 GiB / 4 GiB; the
    official ViT-B/16 checkpoint is ~600 MB), zip-bomb compression ratios, and every tensor view against its
    storage (no negative, out-of-bounds, broadcast or overlapping view with more elements than its storage).
    A safetensors file (the official weights re-saved) is read too. The weights under ``"state_dict"``,
    ``"model"`` or ``"model_state_dict"`` of a training checkpoint are taken (its other entries named in a
    warning), and a DDP ``module.`` prefix is removed.
    Raises:
        FileNotFoundError, or ValueError naming the file and the member or tensor key: a folder, a file that is
        no checkpoint (empty, a web page, another format), a check failed, the file is truncated or corrupted (a
        CRC-32 mismatch; a NaN or infinite weight), needs code to unpickle (it is never executed), or is a legacy
        (non-zip) pickle.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".bin", ".safetensors"))
        raise ValueError(
            f"{path} is a folder: pass the checkpoint file itself"
            + (f" (this folder holds {', '.join(files[:5])})." if files else ".")
        )
    if not path.is_file():
        if os.path.lexists(path):  # a FIFO, socket, device or link loop: named, not called missing
            check_regular_file(path)
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if is_safetensors_file(path):
        state = read_safetensors_file(path, max_total_bytes)
    elif is_torchscript_archive(path):
        state = read_torchscript_archive(path, max_total_bytes, max_member_bytes)
    else:
        state = load_torch_archive(path, max_total_bytes, max_member_bytes)
    state = model_state_dict(state, path)
    check_tensor_views(state, path, max_total_bytes)  # again, on what torch.load built
    check_finite(state, str(path))
    return state


def model_state_dict(state: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """The model's weights of a loaded checkpoint (a file's contents or a dict given as such): the entry of a
    training checkpoint that holds them (`_weights_entry`), checked to be names -> tensors (`check_state_dict`),
    without a DDP ``module.`` prefix."""
    state = _weights_entry(state, source)
    check_state_dict(state, source)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or infinite values in any floating tensor of ``state_dict`` (no trained weight holds one).

    Raises:
        ValueError: naming ``source`` and every such tensor with its counts.
    """
    bad = []
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            nan = int(torch.isnan(value).sum())
            inf = int(torch.isinf(value).sum())
            bad.append(f"{key!r} ({nan:,} NaN, {inf:,} inf of {value.numel():,} values)")
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} tensor(s) hold non-finite values: {', '.join(bad)}. The checkpoint is "
            f"corrupted or was saved from a diverged training run; it is not converted. {REDOWNLOAD}"
        )
