"""Host (CPU) memory reuse for training on a CPU: glibc's allocator told to keep freed memory for the next step.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, a block of more than 32 MiB
is mapped fresh from the operating system at every allocation and unmapped when freed, and the top of the heap
is handed back whenever more than ~64 MiB of it is free; a training step that frees its activations at the end
thus maps them fresh at the next step, and the kernel zeroes every page at its first touch. Measured on this
project's 2-core CPU (WeCLIP step, batch 4, crop 320): ~45,000-120,000 page faults (~0.2-0.5 GB) and 0.1-0.3 s
of kernel time per step; with the memory kept, ~4,000 faults and 0.02 s.

`retain_freed_host_memory` sets glibc's thresholds so that freed memory stays with the process for reuse (the
process's resident memory then stays at its peak instead of shrinking between steps). It changes the whole
process, so the library never calls it by itself: ``examples/train.py`` and ``examples/benchmark.py`` do on a
CPU run unless told not to (``--release_host_memory``), the same setting a user gets from
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or an allocator such as jemalloc or tcmalloc, which
PyTorch's CPU performance guide recommends.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# blocks below this come from the heap: 1 GiB, or 32 MiB where glibc refuses more (older versions cap it there)
_MMAP_THRESHOLDS = (2**30, 32 * 2**20)
_NEVER_TRIM = 2**31 - 1  # the largest value of mallopt's int parameter


def retain_freed_host_memory() -> bool:
    """Keep freed host memory in the process for reuse (glibc only): blocks below 1 GiB (32 MiB on older glibc)
    come from the heap and the heap is not trimmed (below 2 GiB free). Returns True if the C library took the
    setting, False where it is not glibc (the call then changes nothing)."""
    libc = _glibc()
    if libc is None:
        return False
    mapped = any(libc.mallopt(_M_MMAP_THRESHOLD, size) for size in _MMAP_THRESHOLDS)
    return mapped and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


__all__ = ["retain_freed_host_memory"]
