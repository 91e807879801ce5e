"""weclip_hf.host_memory: freed host memory kept for reuse, checked in a fresh process (the setting is global)."""

import json
import subprocess
import sys
import textwrap

import pytest

import weclip_hf.host_memory as host_memory
from weclip_hf.host_memory import retain_freed_host_memory

# glibc's accounting of its allocator (mallinfo2, glibc >= 2.33; mallinfo's int fields before) around a 64 MiB
# tensor allocated and freed: bytes in blocks mapped apart from the heap, the heap's size and its free bytes
_ALLOCATOR_STATE = textwrap.dedent(
    """
    import ctypes, ctypes.util, importlib.util, json, sys
    import torch

    # the module alone (the package would import transformers: seconds per process)
    spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
    host_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_memory)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    mallinfo, field = (libc.mallinfo2, ctypes.c_size_t) if hasattr(libc, "mallinfo2") else (libc.mallinfo, ctypes.c_int)
    mallinfo.restype = type("MallInfo", (ctypes.Structure,), {"_fields_": [(n, field) for n in names]})

    def state():
        info = mallinfo()
        return {"mapped": info.hblkhd, "heap": info.arena, "free": info.fordblks}

    retained = host_memory.retain_freed_host_memory() if sys.argv[1] == "retain" else None
    start = state()
    tensor = torch.ones(64 * 2**18)
    held = state()
    del tensor
    print(json.dumps({"retained": retained, "start": start, "held": held, "freed": state()}))
    """
)
MIB = 2**20


def _allocator_state(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_STATE, mode, host_memory.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_retained_memory_comes_from_the_heap_and_stays_there():
    """glibc's settings in effect, read from its own accounting: by default a 64 MiB tensor is a block mapped apart
    from the heap and unmapped when freed (mapped afresh, page by page, at the next allocation); with the memory
    retained it comes from the heap and stays there, free for the next one. (The page faults this saves:
    examples/benchmark_host_memory.py.)"""
    default = _allocator_state("default")
    retained = _allocator_state("retain")
    if retained["retained"] is not True:
        pytest.skip("the C library is not glibc: retain_freed_host_memory changes nothing here")
    start, held, freed = default["start"], default["held"], default["freed"]
    assert held["mapped"] - start["mapped"] >= 64 * MIB, default
    assert freed["mapped"] == start["mapped"], default  # unmapped: handed back to the kernel
    start, held, freed = retained["start"], retained["held"], retained["freed"]
    assert held["mapped"] == start["mapped"], retained
    # the tensor's bytes are the heap's: its bytes in use grow by 64 MiB (its size grows by less where the block
    # takes the free space at its top)
    assert (held["heap"] - held["free"]) - (start["heap"] - start["free"]) >= 64 * MIB, retained
    assert freed["heap"] == held["heap"] and freed["free"] >= 64 * MIB, retained  # kept, not trimmed


def test_retain_is_a_no_op_without_glibc(monkeypatch):
    import weclip_hf.host_memory as host_memory

    monkeypatch.setattr(host_memory.ctypes.util, "find_library", lambda name: None)
    assert retain_freed_host_memory() is False


class _FakeMallopt:
    """A ``mallopt`` taking the parameters in ``accepted``, recording every call."""

    def __init__(self, accepted: set[int]):
        self.calls, self.accepted = [], accepted

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return int(parameter in self.accepted)


class _FakeLibc:
    """A C library with that ``mallopt``; glibc where it has ``gnu_get_libc_version``."""

    def __init__(self, accepted: set[int], glibc: bool = True):
        self.mallopt = _FakeMallopt(accepted)
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.99"


def _with_libc(monkeypatch, libc: _FakeLibc) -> None:
    monkeypatch.setattr(host_memory.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: libc)


def test_retain_is_true_only_where_the_c_library_takes_both_settings(monkeypatch):
    """True only where glibc took the mmap threshold (1 GiB, else 32 MiB) and the trim threshold."""
    both = _FakeLibc({host_memory._M_MMAP_THRESHOLD, host_memory._M_TRIM_THRESHOLD})
    _with_libc(monkeypatch, both)
    assert retain_freed_host_memory() is True
    assert both.mallopt.calls == [
        (host_memory._M_MMAP_THRESHOLD, 2**30),
        (host_memory._M_TRIM_THRESHOLD, 2**31 - 1),
    ]
    _with_libc(monkeypatch, _FakeLibc({host_memory._M_MMAP_THRESHOLD}))
    assert retain_freed_host_memory() is False


def test_a_c_library_other_than_glibc_is_left_alone(monkeypatch):
    """A C library with a ``mallopt`` but no ``gnu_get_libc_version`` (not glibc) is not told anything."""
    other = _FakeLibc({host_memory._M_MMAP_THRESHOLD, host_memory._M_TRIM_THRESHOLD}, glibc=False)
    _with_libc(monkeypatch, other)
    assert retain_freed_host_memory() is False and other.mallopt.calls == []
