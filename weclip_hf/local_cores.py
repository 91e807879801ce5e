"""The CPU cores one process of a launch may use: those it may run on, shared among the processes of the launch on
this machine (the training threads of a CPU run, the toy world's rendering processes, DataLoader workers)."""

from __future__ import annotations

import os


def cores_per_local_process(num_processes: int = 1) -> int:
    """The cores this process may run on, divided among the local processes (at least 1): ``LOCAL_WORLD_SIZE``
    where torchrun or accelerate set it, else ``num_processes``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    return max(1, cores // max(1, local))
