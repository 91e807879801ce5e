"""weclip_hf.host_memory: freed host memory kept for reuse, checked in a fresh process (the setting is global)."""

import subprocess
import sys
import textwrap

import pytest

import weclip_hf.host_memory as host_memory
from weclip_hf.host_memory import retain_freed_host_memory

_FAULTS_OF_REALLOCATION = textwrap.dedent(
    """
    import importlib.util, resource, sys
    import torch

    # the module alone (the package would import transformers: seconds per process)
    spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
    host_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_memory)
    retained = host_memory.retain_freed_host_memory() if sys.argv[1] == "retain" else None
    # 64 MiB allocated, touched, freed: the heap grows to what the loop needs. Where small allocations land after
    # the block, the freed block is a little short of the next aligned one until freed neighbours merge (here the
    # heap grew 4-9 times before it stopped)
    for _ in range(20):
        torch.ones(64 * 2**18).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(64 * 2**18).sum()
    print(retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_REALLOCATION, mode, host_memory.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_retained_memory_is_reused_without_page_faults():
    """Allocating a 64 MiB tensor ten more times: glibc's default maps it afresh each time (one fault per 4 KiB
    page, ~16,000 per allocation); with the memory retained the heap's blocks are reused (measured: 0 in 30 fresh
    processes after 20 warm-up allocations; after 3 or 8, up to 65,537 in a process that had imported torch
    alone: the heap grows until freed blocks merge)."""
    _, default = _faults("default")
    retained, after = _faults("retain")
    if retained != "True":
        pytest.skip("the C library is not glibc: retain_freed_host_memory changes nothing here")
    assert default > 10 * 10_000, default
    assert after < default / 4, (after, default)


def test_retain_is_a_no_op_without_glibc(monkeypatch):
    import weclip_hf.host_memory as host_memory

    monkeypatch.setattr(host_memory.ctypes.util, "find_library", lambda name: None)
    assert retain_freed_host_memory() is False
