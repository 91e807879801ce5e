"""PAR's two passes as Triton kernels on CUDA, one launch each: the neighbour weights (`weclip_hf.par.par_affinity`)
and one iteration (`weclip_hf.par.par_iteration`). The eager path makes ~150 (weights) and 8*D (iteration) passes
over whole maps: launch-bound on a GPU at small batches, memory-bound at large ones. This module decides where the
kernels run and launches them; the kernels are `weclip_hf.par_kernels`, imported on first use.

Used for float32 CUDA tensors when Triton is installed (it ships with PyTorch's CUDA wheels). The same kernels
run on a CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported and left
so), which is how the tests check them without a GPU. Where Triton cannot launch them (it builds a kernel's launcher
at its first launch: no C compiler, an unwritable cache, a GPU its ptxas does not know), the first failed launch
turns them off for the process with one warning, and PAR takes the eager path (`KernelLaunchError`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple

import torch
from transformers.utils import logging as hf_logging

logger = hf_logging.get_logger(__name__)

# Triton defines the kernels compiled or interpreted when they are first imported: read the switch once, here
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


class ParKernels(NamedTuple):
    """The two kernels of `weclip_hf.par_kernels`."""

    affinity: object  # par_affinity_kernel: the neighbour weights
    iteration: object  # par_iteration_kernel: one refinement pass
    # LAUNCH_ERRORS: what a launch raises where Triton cannot build or load the kernels
    launch_errors: tuple[type[Exception], ...]


class KernelLaunchError(RuntimeError):
    """Triton could not build or load a kernel here (its cause chained); the kernels are off for the process."""


# why the kernels are off for the process (the first failed launch's error), None while they run
_launch_failure: str | None = None


@functools.cache
def kernels() -> ParKernels | None:
    """The kernels of `weclip_hf.par_kernels`, imported on the first call (Triton defines them then); None without
    Triton, or where ``TRITON_INTERPRET`` changed since this module was imported (the kernels would be defined for
    the other mode: the eager path runs)."""
    if (os.environ.get("TRITON_INTERPRET", "0") == "1") != INTERPRETING:
        return None
    try:
        # `from .module import names` is the form of relative import that transformers follows when it copies a
        # saved folder's code for trust_remote_code (`from . import par_kernels` left the kernels out of it)
        from .par_kernels import LAUNCH_ERRORS, par_affinity_kernel, par_iteration_kernel
    except ImportError:  # CPU-only PyTorch: the eager path runs
        return None
    return ParKernels(par_affinity_kernel, par_iteration_kernel, LAUNCH_ERRORS)


def _loaded_kernels() -> ParKernels:
    """`kernels`, or a clear error for a direct launch where they cannot run."""
    loaded = kernels()
    if loaded is None:
        raise RuntimeError(
            "PAR's Triton kernels cannot run here (no Triton, or TRITON_INTERPRET changed since "
            "weclip_hf.par_triton was imported); weclip_hf.par.par_affinity / par_iteration take the eager path"
        )
    return loaded


def triton_available(tensor: torch.Tensor) -> bool:
    """Whether the kernels take ``tensor``: float32, no gradient asked for (the kernels have no backward), Triton
    installed, and a CUDA device that Triton compiles for (compute capability 7.0 or newer, as `torch.compile`
    requires; or Triton's interpreter, on any device); and no launch has failed in this process."""
    if tensor.dtype != torch.float32 or (tensor.requires_grad and torch.is_grad_enabled()):
        return False
    if _launch_failure is not None:
        return False
    if not INTERPRETING and not (tensor.device.type == "cuda" and _compiles_for(tensor.device.index)):
        return False  # decided without importing Triton
    return kernels() is not None


@functools.cache
def _compiles_for(device_index: int | None) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 7


def _cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _check_launch(
    data: torch.Tensor, other: torch.Tensor, shape: tuple[int, ...], offsets: torch.Tensor, name: str
) -> None:
    """The kernels index without bounds checks: refuse a wrongly shaped, typed or placed input before a launch."""
    if data.dim() != 4 or tuple(other.shape) != shape or other.dtype != torch.float32:
        raise ValueError(
            f"PAR kernel: {name} of shape {tuple(other.shape)} / {other.dtype}, expected {shape} float32"
        )
    if offsets.shape[0] != 2 or offsets.dtype != torch.int32:
        raise ValueError(
            f"PAR kernel: offsets of shape {tuple(offsets.shape)} / {offsets.dtype}, expected [2, N] int32"
        )
    if not (other.device == offsets.device == data.device):
        raise ValueError(f"PAR kernel: inputs on {data.device}, {other.device} and {offsets.device}")


def _launch(name: str, grid: tuple[int, ...], *args, **meta) -> None:
    """Launches kernel ``name`` of `ParKernels` on ``grid``. Where Triton cannot build or load it here
    (``launch_errors``), turns the kernels off for the process, warning once with the cause, and raises
    `KernelLaunchError` (`weclip_hf.par` then takes the eager path)."""
    global _launch_failure
    loaded = _loaded_kernels()
    try:
        getattr(loaded, name)[grid](*args, **meta)
    except loaded.launch_errors as error:
        cause = f"{type(error).__name__}: {error}"
        if _launch_failure is None:
            logger.warning(
                f"PAR's Triton kernels cannot launch here ({cause}); PAR takes the eager path (same results, "
                "slower on a GPU) for the rest of this process. Fix Triton's setup (e.g. a C compiler, CC=..., "
                "or a writable TRITON_CACHE_DIR) to use them."
            )
            _launch_failure = cause
        raise KernelLaunchError(f"PAR kernel {name} could not launch: {cause}") from error


def _on_device(tensor: torch.Tensor):
    """The tensor's CUDA device as the current one while a kernel launches (Triton launches on the current
    device); nothing elsewhere. (The launches are also named for torch.profiler, whose operator rows would not
    show a kernel launched outside an aten operator.)"""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def par_iteration_triton(scores: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`weclip_hf.par.par_iteration` in one kernel launch: scores [B, C, H, W] float32, weights [8*D, B, H, W]
    float32 from `par_affinity`, offsets [2, 8*D] int32 (row, col) of the neighbours in the weights' order ->
    [B, C, H, W]."""
    b, c, h, w = scores.shape
    _check_launch(scores, weights, (offsets.shape[1], b, h, w), offsets, "weights")
    scores = scores.contiguous()
    weights = weights.contiguous()
    out = torch.empty_like(scores)
    if out.numel() == 0:  # no map (or no pixel): nothing to launch
        return out
    block = 256
    with _on_device(scores), torch.profiler.record_function("weclip::par_iteration_kernel"):
        maps = min(_next_power_of_2(c), 16)
        grid, sizes = (_cdiv(h * w, block), b, _cdiv(c, maps)), (b, c, h, w, offsets.shape[1])
        _launch("iteration", grid, scores, weights, offsets, out, *sizes, MAPS=maps, BLOCK=block)
    return out


def par_affinity_triton(
    image: torch.Tensor, offsets: torch.Tensor, position: torch.Tensor, temperature: float, pos_weight: float
) -> torch.Tensor:
    """`weclip_hf.par.par_affinity` in one kernel launch: image [B, C, H, W] float32, offsets [2, 8*D] int32,
    position [8*D] float32 (the position softmax) -> weights [8*D, B, H, W]."""
    b, c, h, w = image.shape
    k = offsets.shape[1]
    _check_launch(image, position, (k,), offsets, "position")
    out = image.new_empty(k, b, h, w)
    if out.numel() == 0:  # no image (or no pixel): nothing to launch
        return out
    block = 128
    with _on_device(image), torch.profiler.record_function("weclip::par_affinity_kernel"):
        _launch(
            "affinity",
            (_cdiv(h * w, block), b),
            image.contiguous(),
            offsets,
            position,
            out,
            b,
            c,
            h,
            w,
            k,
            temperature,
            pos_weight,
            CHANNELS=_next_power_of_2(c),
            BLOCK=block,
        )
    return out
