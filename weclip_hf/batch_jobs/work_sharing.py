"""The share of a job's inputs each process takes (`process_share`), the groups of one size its batches run in
(`group_by_size`), its DataLoader workers (`decoding_workers`) and the inputs that get an overlay (`wants_overlay`).
"""

from __future__ import annotations


def process_share(num_inputs: int, rank: int, world_size: int) -> range:
    """The inputs process ``rank`` of ``world_size`` takes: ``rank, rank + world_size, ...``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size - 1 = {world_size - 1}, got {rank}.")
    return range(rank, num_inputs, world_size)


def decoding_workers(num_workers: int | None, device_type: str) -> int:
    """DataLoader workers of a batch job: ``num_workers`` (``--num_workers``) if given, else 2 on an accelerator
    and 0 on the CPU (where workers would take the cores of the model's threads)."""
    if num_workers is not None:
        return num_workers
    return 0 if device_type == "cpu" else 2


def group_by_size(items: list[dict], key: str = "pixel_values") -> list[list[dict]]:
    """``items`` in groups whose tensors ``item[key]`` have one shape (one forward each), in order of appearance."""
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault(tuple(item[key].shape), []).append(item)
    return list(groups.values())


def wants_overlay(index: int, num_overlays: int) -> bool:
    """Whether the input at ``index`` gets an overlay: one of the first ``num_overlays`` (--num_overlays; -1: all)."""
    return num_overlays < 0 or index < num_overlays
