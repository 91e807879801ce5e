"""How examples/train.py computes: torch.compile's mode and the compiled training forward, the `Computation` its
checkpoints record (device, compilation, threads), the DataLoader workers of a process.
"""

from __future__ import annotations

import torch

from weclip_hf.checkpointing import Computation, compile_mode_in_effect
from weclip_hf.local_cores import cores_per_local_process


def compile_mode(args, device: torch.device) -> str | None:
    """The torch.compile mode in effect on ``device``: --torch_compile_mode, else with inductor reduce-overhead on a
    GPU and default elsewhere (None: another backend's default, which torch passes it for "default" too)."""
    if args.torch_compile_mode is None and args.torch_compile_backend == "inductor":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return compile_mode_in_effect(args.torch_compile_backend, args.torch_compile_mode)


def compiled_forward(args, model, device: torch.device):
    """``--torch_compile``: ``model`` (as prepared: under DDP the wrapper, whose graphs torch splits at its gradient
    buckets) through `torch.compile`; the module itself stays uncompiled for evaluation and saving."""
    return torch.compile(model, backend=args.torch_compile_backend, mode=compile_mode(args, device))


def run_computation(args, device: torch.device, threads: int | None) -> Computation:
    """How this run computes on ``device`` with ``threads`` (a CPU run's; None on an accelerator), which orders
    its float sums: what its checkpoints record and a resume compares (`computation_change_warning`)."""
    if not args.torch_compile:
        return Computation(device.type, torch_compile=False, threads=threads)
    return Computation(device.type, True, args.torch_compile_backend, compile_mode(args, device), threads)


def default_num_workers(device_type: str, num_processes: int) -> int:
    """DataLoader workers when ``--num_workers`` is not given: up to 4 per process on an accelerator, 0 on
    the CPU."""
    return 0 if device_type == "cpu" else min(4, cores_per_local_process(num_processes))
