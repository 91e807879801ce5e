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
