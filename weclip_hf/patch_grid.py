"""Geometry of the h x w patch grid: cell coordinates and neighbourhoods (flat index ``y * w + x``).

Shared by the connected components of the box masks and the affinity loss's pair labels.
"""

from __future__ import annotations

import torch


def cell_coordinates(h: int, w: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every cell of an h x w grid, in flat order: two [h*w] int64 tensors."""
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    return ys, xs


def grid_neighbourhood(h: int, w: int, radius: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """[h*w, h*w] bool: pairs of cells of an h x w grid within Chebyshev distance ``radius`` (radius 1:
    the 8-neighbourhood plus the cell itself)."""
    ys, xs = cell_coordinates(h, w, device)
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
