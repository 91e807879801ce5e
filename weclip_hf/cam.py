"""Class activation maps (DESIGN Part 1, CAM steps 2 and 4-6): GradCAM, box masks, propagation by a
transition matrix, normalisation and upsampling, for all (image, class) pairs at once.

Every function works on a whole batch of pairs: no Python loop over images or classes. A "pair" is
one (image, present class); pairs are ordered by image, then by ascending class id (the order the
official code visits them).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .connected_components import connected_components
from .patch_grid import cell_coordinates

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
    return gradcam_from_weights(activations, gradients.mean(dim=1), grid)


def gradcam_from_weights(
    activations: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """`gradcam` from its channel weights (the gradients' mean over patch tokens), e.g. as
    `weclip_hf.last_block` gives them.

    Args: activations: [P, N, D] patch tokens. weights: [P, D]. grid: (h, w) with h * w = N.
    Returns: [P, h, w] maps in [0, 1), normalized twice as `gradcam`.
    """
    cam = torch.einsum("pnd,pd->pn", activations, weights).relu()
    cam = cam.reshape(-1, *grid)
    return minmax_normalize(minmax_normalize(cam))


def box_threshold_mask(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary map of the cells above the box threshold, exactly as the official uint8 path: [P, h, w] bool.

    ``cam_u8 = uint8(cam * 255)`` (truncating), threshold ``int(threshold * max(cam_u8))``, strictly
    greater. An all-zero CAM gives an empty map, and so does a non-finite one (a diverged run: its threshold is NaN,
    as the float64 product gives it).
    """
    cam_u8 = (cams * 255).floor()
    peak = cam_u8.amax(dim=(-2, -1), keepdim=True)
    finite = peak.isfinite()
    index = torch.where(finite, peak, 0).long().clamp_(0, 255)
    thresholds = uint8_thresholds(threshold, cams.device)[index].to(cams.dtype)
    return cam_u8 > thresholds.masked_fill(~finite, float("nan"))


@functools.lru_cache(maxsize=8)
def uint8_thresholds(threshold: float, device: torch.device) -> torch.Tensor:
    """``int(threshold * v)`` for each uint8 peak ``v`` in 0..255, in Python's float64 arithmetic as the official
    code computes it: a table on ``device``, so that devices without float64 (Apple's MPS) run the box mask too."""
    with torch.inference_mode(False):  # kept in the cache: usable outside any inference mode
        return torch.tensor([math.floor(threshold * v) for v in range(256)], device=device)


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
    ys, xs = (c.expand(p, n) for c in cell_coordinates(h, w, binary.device))
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


def cam_box_masks(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """Box masks of normalized CAMs [P, h, w]: `box_mask` of the cells above `box_threshold_mask`'s
    threshold, [P, h, w] float (0/1)."""
    return box_mask(box_threshold_mask(cams, threshold))


def refine_cams(
    cams: torch.Tensor,
    transition: torch.Tensor,
    pair_image: torch.Tensor,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """CAMs propagated by their image's transition matrix: ``(T * mask[None, :]) @ cam`` per pair.

    Args:
        cams: [P, h, w] the maps to propagate (GradCAMs, or GradCAMs times a per-pair weight map).
        transition: [B, N, N] per image. pair_image: [P] image index of each pair.
        masks: [P, h, w] box masks (they mask the columns of T); None: no mask (all ones).
    Returns:
        [P, h, w] refined CAMs (not normalized).
    """
    p, h, w = cams.shape
    masked = cams if masks is None else cams * masks
    return torch.bmm(transition[pair_image], masked.reshape(p, h * w, 1)).reshape(p, h, w)


def upsample_normalized(refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pair min-max normalization, then bilinear upsampling (align_corners=False): [P, H, W]."""
    return F.interpolate(minmax_normalize(refined)[:, None], size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]
