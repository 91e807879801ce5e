"""weclip_hf.host_memory: freed host memory kept for reuse, checked in a fresh process (the setting is global)."""

import subprocess
import sys
import textwrap

import pytest

from weclip_hf.host_memory import retain_freed_host_memory

_FAULTS_OF_REALLOCATION = textwrap.dedent(
    """
    import resource, sys
    import torch
    from weclip_hf.host_memory import retain_freed_host_memory

    retained = retain_freed_host_memory() if sys.argv[1] == "retain" else None
    for _ in range(3):  # 64 MiB allocated, touched, freed: the heap grows to what the loop needs
        torch.ones(64 * 2**18).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(64 * 2**18).sum()
    print(retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_REALLOCATION, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_retained_memory_is_reused_without_page_faults():
    """Allocating a 64 MiB tensor five more times: glibc's default maps it afresh each time (one fault per 4 KiB
    page, ~16,000 per allocation); with the memory retained the heap's blocks are reused (measured: 0 here; a
    fresh CI clone once saw one allocation's worth, 16,384, with a single warm-up allocation)."""
    _, default = _faults("default")
    retained, after = _faults("retain")
    if retained != "True":
        pytest.skip("the C library is not glibc: retain_freed_host_memory changes nothing here")
    assert default > 5 * 10_000, default
    assert after < default / 4, (after, default)


def test_retain_is_a_no_op_without_glibc(monkeypatch):
    import weclip_hf.host_memory as host_memory

    monkeypatch.setattr(host_memory.ctypes.util, "find_library", lambda name: None)
    assert retain_freed_host_memory() is False
