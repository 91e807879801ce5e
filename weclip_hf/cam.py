"""Batched CAM generation (DESIGN Part 1, CAM steps 1-6) for all (image, class) pairs at once.

Every function works on a whole batch of pairs: no Python loop over images or classes. A "pair" is
one (image, present class); pairs are ordered by image, then by ascending class id (the order the
official code visits them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def minmax_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max(x - min) + 1e-7)`` over the last two dims of ``x`` ([..., h, w])."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + EPS)


def gradcam(activations: torch.Tensor, gradients: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """GradCAM maps from patch activations and their gradients.

    Args:
        activations: [P, N, D] patch tokens (the last block's first LayerNorm output).
        gradients: [P, N, D] gradient of each pair's class probability w.r.t. those tokens.
        grid: (h, w) with h * w = N.
    Returns:
        [P, h, w] maps in [0, 1). The official code min-max normalizes twice; the second pass only
        matters through the uint8 truncation of the box threshold (the maximum becomes 254 or 255).
    """
    weights = gradients.mean(dim=1)  # [P, D]
    cam = torch.einsum("pnd,pd->pn", activations, weights).relu()
    cam = cam.reshape(-1, *grid)
    return minmax_normalize(minmax_normalize(cam))


def transition_matrix(affinity: torch.Tensor) -> torch.Tensor:
    """Affinity [B, N, N] -> symmetric, squared transition matrix (three column/row normalizations)."""
    t = affinity
    for _ in range(3):
        t = t / t.sum(dim=-2, keepdim=True)  # column sums (official dim 0)
        t = t / t.sum(dim=-1, keepdim=True)  # row sums (official dim 1)
    t = (t + t.transpose(-1, -2)) / 2
    return t @ t


def box_threshold_mask(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary map of the cells above the box threshold, exactly as the official uint8 path: [P, h, w] bool.

    ``cam_u8 = uint8(cam * 255)`` (truncating), threshold ``int(threshold * max(cam_u8))``, strictly
    greater. An all-zero CAM gives an empty map.
    """
    cam_u8 = (cams * 255).floor()
    peak = cam_u8.amax(dim=(-2, -1), keepdim=True)
    thr = (peak.double() * threshold).floor().to(cams.dtype)
    return cam_u8 > thr


def grid_neighbourhood(h: int, w: int, radius: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """[h*w, h*w] bool: pairs of cells of an h x w grid within Chebyshev distance ``radius`` (radius 1:
    the 8-neighbourhood plus the cell itself)."""
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


def connected_components(binary: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a batch of binary maps, computed where the maps live.

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


def box_mask(binary: torch.Tensor) -> torch.Tensor:
    """Union of the bounding boxes of the 8-connected regions of each map: [P, h, w] float (0/1).

    Faithful to the official quirk: each box's exclusive end is clipped to width-1 / height-1, so a box
    touching the right/bottom edge loses its last column/row.
    """
    p, h, w = binary.shape
    n = h * w
    labels = connected_components(binary).reshape(p, n)
    valid = labels >= 0
    root = labels.clamp(min=0)
    ys = torch.arange(h, device=binary.device).repeat_interleave(w).expand(p, n)
    xs = torch.arange(w, device=binary.device).repeat(h).expand(p, n)
    big = torch.full((p, n), n, device=binary.device, dtype=torch.long)
    small = torch.full((p, n), -1, device=binary.device, dtype=torch.long)
    y0 = big.scatter_reduce(1, root, torch.where(valid, ys, big), "amin")
    x0 = big.scatter_reduce(1, root, torch.where(valid, xs, big), "amin")
    y1 = small.scatter_reduce(1, root, torch.where(valid, ys, small), "amax") + 1
    x1 = small.scatter_reduce(1, root, torch.where(valid, xs, small), "amax") + 1
    is_root = (labels == torch.arange(n, device=binary.device)).long()  # one entry per component
    y1 = y1.clamp(max=h - 1)
    x1 = x1.clamp(max=w - 1)
    y0, x0 = y0.clamp(max=h), x0.clamp(max=w)
    # 2-D difference array: +1 at (y0, x0) and (y1, x1), -1 at (y0, x1) and (y1, x0); cumsum twice.
    diff = torch.zeros(p, (h + 1) * (w + 1), device=binary.device, dtype=torch.long)
    stride = w + 1
    for yy, xx, sign in ((y0, x0, 1), (y1, x1, 1), (y0, x1, -1), (y1, x0, -1)):
        diff.scatter_add_(1, (yy * stride + xx).clamp(0, diff.shape[1] - 1), sign * is_root)
    cover = diff.reshape(p, h + 1, w + 1).cumsum(1).cumsum(2)[:, :h, :w]
    return (cover > 0).to(torch.float32)


def refine_cams(
    cams: torch.Tensor, transition: torch.Tensor, pair_image: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Affinity-refined CAMs: ``(T * box_mask[None, :]) @ cam`` per pair.

    Args:
        cams: [P, h, w] GradCAMs. transition: [B, N, N] per image. pair_image: [P] image index of each
        pair. masks: [P, h, w] box masks (they mask the columns of T).
    Returns:
        [P, h, w] refined CAMs (not normalized).
    """
    p, h, w = cams.shape
    masked = (cams * masks).reshape(p, h * w, 1)
    return torch.bmm(transition[pair_image], masked).reshape(p, h, w)


def upsample_normalized(refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pair min-max normalization, then bilinear upsampling (align_corners=False): [P, H, W]."""
    return F.interpolate(minmax_normalize(refined)[:, None], size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]
