"""8-connected components of a batch of binary maps, computed where the maps live (no OpenCV, no loop
over maps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .patch_grid import grid_neighbourhood


def connected_components(binary: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a batch of binary maps.

    Args:
        binary: [P, h, w] bool.
    Returns:
        [P, h, w] int64: for foreground cells, the flat index (y * w + x) of the smallest cell of its
        component; -1 for background.

    On an accelerator: `components_by_closure` (fixed work, no host sync). On the CPU, where a
    convergence check costs nothing: `components_by_propagation` (far less work). Both are exact.
    """
    if binary.device.type == "cpu":
        return components_by_propagation(binary)
    return components_by_closure(binary)


def components_by_closure(binary: torch.Tensor) -> torch.Tensor:
    """`connected_components` by transitive closure of the foreground adjacency (repeated squaring).

    ``ceil(log2(h * w))`` batched matrix products always suffice (any path has fewer than ``h * w``
    steps): the work is fixed and the result exact for every shape, spirals included, with no
    data-dependent loop, hence no host-device synchronisation.
    """
    p, h, w = binary.shape
    n = h * w
    fg = binary.reshape(p, n).float()
    reach = grid_neighbourhood(h, w, 1, binary.device).float() * fg[:, :, None] * fg[:, None, :]  # [P, N, N]
    for _ in range(max(n - 1, 1).bit_length()):  # 2 ** rounds >= n - 1 path steps
        reach = torch.bmm(reach, reach).clamp_(max=1.0)
    idx = torch.arange(n, device=binary.device)
    labels = torch.where(reach > 0, idx, n).amin(dim=-1)  # smallest reachable cell
    return torch.where(binary.reshape(p, n), labels, -1).reshape(p, h, w)


def components_by_propagation(binary: torch.Tensor) -> torch.Tensor:
    """`connected_components` by min-label propagation with pointer jumping until nothing changes.

    Each round takes the smallest label of the 3x3 neighbourhood, then the label of the cell the
    label points to; a few rounds converge for blob-like regions. Convergence is checked on the host
    every 4 rounds (extra rounds after convergence are no-ops).
    """
    p, h, w = binary.shape
    n = h * w
    big = float(n)
    idx = torch.arange(n, device=binary.device, dtype=torch.float32).expand(p, n).reshape(p, 1, h, w)
    fg = binary.reshape(p, 1, h, w)
    labels = torch.where(fg, idx, torch.full_like(idx, big))
    while True:
        previous = labels
        for _ in range(4):
            neighbour_min = -F.max_pool2d(F.pad(-labels, (1, 1, 1, 1), value=-big), 3, stride=1)
            labels = torch.where(fg, torch.minimum(labels, neighbour_min), labels)
            flat = labels.reshape(p, n)
            jumped = torch.gather(flat, 1, flat.clamp(max=n - 1).long()).reshape_as(labels)
            labels = torch.where(fg, torch.minimum(labels, jumped), labels)
        if torch.equal(previous, labels):
            break
    out = labels.reshape(p, h, w).long()
    return torch.where(binary, out, torch.full_like(out, -1))
