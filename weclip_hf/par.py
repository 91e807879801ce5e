"""PAR (pixel-adaptive refinement, DESIGN Part 1 CAM step 7): score maps snapped to the image by colour and
position affinities between each pixel and its dilated 3x3 ring neighbours."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F

from .chunking import concat_chunks, images_per_chunk
from .par_triton import KernelLaunchError, par_affinity_triton, par_iteration_triton, triton_available

# The 8 neighbours of a 3x3 ring as (row, col) offsets in units of the dilation, in the official order
# (0,0) (0,1) (0,2) (1,0) (1,2) (2,0) (2,1) (2,2) of the kernel grid.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def ring_views(x: torch.Tensor, dilations: list[int]) -> list[torch.Tensor]:
    """The 8 ring neighbours of every pixel at every dilation, replicate padding: 8*D views [B, C, H, W] of
    one padded copy of ``x`` (no [B, C, 8*D, H, W] stack is materialized)."""
    h, w = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return [
        padded[..., pad + dy * d : pad + dy * d + h, pad + dx * d : pad + dx * d + w]
        for d in dilations
        for dy, dx in _RING
    ]


def par_affinity(
    image: torch.Tensor, dilations: list[int], temperature: float = 0.3, pos_weight: float = 0.01
) -> torch.Tensor:
    """PAR neighbour weights from colour and position: [B, 3, H, W] -> [8*D, B, H, W] (neighbour-major: one
    contiguous plane per neighbour).

    Colour: ``-(|I_n - I| / (sd + 1e-8) / w1)^2`` with sd the unbiased std over the neighbours, averaged
    over channels, softmax over neighbours. Position: ``-(dist / std(dist) / w1)^2`` (distance d or
    d*sqrt(2)), softmax over neighbours, times ``pos_weight``, added. One Triton kernel where it can run
    (`weclip_hf.par_triton`; where it cannot launch, the eager path from then on), else `par_affinity_eager`.
    """
    if triton_available(image):
        key = tuple(dilations)
        position = _position_term(key, temperature, image.device, image.dtype)
        # a failed launch turned the kernels off (one warning says why): the eager path, now and from now on
        with contextlib.suppress(KernelLaunchError):
            return par_affinity_triton(
                image, ring_offsets(key, image.device), position, temperature, pos_weight
            )
    return par_affinity_eager(image, dilations, temperature, pos_weight)


def par_affinity_eager(
    image: torch.Tensor, dilations: list[int], temperature: float = 0.3, pos_weight: float = 0.01
) -> torch.Tensor:
    """`par_affinity` in eager PyTorch, accumulated view by view into one scratch map, the softmax in place: the
    transient memory is the [8*D, B, H, W] result, not three [B, 3, 8*D, H, W] stacks."""
    views = ring_views(image, dilations)
    k = len(views)
    # unbiased std over the neighbours, two passes (mean, then squared deviations)
    mean = torch.zeros_like(image)
    for view in views:
        mean += view
    mean /= k
    sq_dev = torch.zeros_like(image)
    scratch = torch.empty_like(image)
    for view in views:
        sq_dev += torch.sub(view, mean, out=scratch).square_()
    scale = ((sq_dev / (k - 1)).sqrt_() + 1e-8).mul_(temperature).square_()
    distance = image.new_empty(k, image.shape[0], *image.shape[-2:])  # the colour term, negated
    channels = scratch.unbind(1)
    for n, view in enumerate(views):
        torch.sub(view, image, out=scratch).square_().div_(scale)
        # the channel mean: the channels added plane by plane here, divided once below (as torch.mean rounds;
        # a reduction over 3 strided channels per neighbour is ~3x slower on a CPU)
        total = distance[n].copy_(channels[0])
        for channel in channels[1:]:
            total += channel
    distance /= len(channels)
    # softmax of -distance over the neighbours, in place (shifted by the smallest distance)
    colour = torch.sub(distance.amin(dim=0, keepdim=True), distance, out=distance).exp_()
    colour /= colour.sum(dim=0, keepdim=True)
    position = _position_term(tuple(dilations), temperature, image.device, image.dtype)
    return colour.add_(pos_weight * position.view(-1, 1, 1, 1))


@functools.lru_cache(maxsize=16)
def _position_term(
    dilations: tuple[int, ...], temperature: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Softmax over neighbours of ``-(dist / std(dist) / w1)^2``: made once per setting and device (no
    host-to-device copy per step)."""
    dist = torch.tensor(
        [d * (math.sqrt(2) if dy and dx else 1.0) for d in dilations for dy, dx in _RING], dtype=dtype
    )
    return (-((dist / dist.std() / temperature) ** 2)).softmax(dim=0).to(device)


@functools.lru_cache(maxsize=16)
def ring_offsets(dilations: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[2, 8*D] int32 (row, col) offsets of the ring neighbours in `ring_views`' order, made once per setting and
    device."""
    rows = [dy * d for d in dilations for dy, _ in _RING]
    cols = [dx * d for d in dilations for _, dx in _RING]
    return torch.tensor([rows, cols], dtype=torch.int32).to(device)


@torch.no_grad()
def par_refine(
    image: torch.Tensor,
    scores: torch.Tensor,
    dilations: list[int],
    num_iter: int = 20,
    temperature: float = 0.3,
    pos_weight: float = 0.01,
    num_maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-adaptive refinement of score maps: each iteration replaces every score by the
    affinity-weighted sum of its neighbours' scores.

    Args:
        image: [B, 3, H, W] normalized image (float32). scores: [B, K, H, W] (resized to the image size
        bilinearly with align_corners=True if needed, as the official PAR does).
        num_maps: [B] how many leading maps of each image are in use, the others being zero (a zero map stays
            zero); None: all K.
    Returns:
        [B, K, H, W] refined scores.

    On a CPU the images are refined a few at a time (`weclip_hf.chunking`: their neighbour weights, 8*D planes of
    H x W per image, within the budget; one image at a 320 crop), so that the weights are reused memory rather
    than fresh pages and the iterations' working set stays in the cache; a chunk refines only the maps in use
    in it (``num_maps``), and a chunk without one computes no weights.
    """
    image = image.float()
    h, w = image.shape[-2:]
    b, k = scores.shape[:2]
    if k == 0:  # no map (the margins of a batch without classes): nothing to refine
        return scores.new_zeros(b, 0, h, w, dtype=torch.float32)
    scores = scores.float()
    if scores.shape[-2:] != image.shape[-2:]:
        scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=True)
    chunk = images_per_chunk(b, len(dilations) * len(_RING) * h * w * 4, image.device)
    # maps in use per chunk (a host read: chunks exist on a CPU only)
    in_use = [k] * b if num_maps is None or chunk >= b else num_maps.clamp(max=k).tolist()
    refined = []
    for start, image_part, scores_part in zip(range(0, b, chunk), image.split(chunk), scores.split(chunk)):
        used = max(in_use[start : start + chunk])
        if used == 0:  # nothing to refine in this chunk (its images have no class: their margins are all 0)
            refined.append(scores_part)
            continue
        weights = par_affinity(image_part, dilations, temperature, pos_weight)
        part = scores_part[:, :used]
        for _ in range(num_iter):
            part = par_iteration(part, weights, dilations)
        refined.append(torch.cat([part, scores_part[:, used:]], dim=1) if used < k else part)
    return concat_chunks(refined)


def par_iteration(scores: torch.Tensor, weights: torch.Tensor, dilations: list[int]) -> torch.Tensor:
    """One PAR iteration: every score becomes the ``weights``-weighted sum of its ring neighbours' scores
    (replicate padding). scores [B, C, H, W], weights [8*D, B, H, W] from `par_affinity`.

    One Triton kernel where it can run (CUDA with Triton: `weclip_hf.par_triton`; where it cannot launch, the eager
    path from then on), else `par_iteration_eager`."""
    if triton_available(scores) and triton_available(weights):
        # a failed launch turned the kernels off (one warning says why): the eager path, now and from now on
        with contextlib.suppress(KernelLaunchError):
            return par_iteration_triton(scores, weights, ring_offsets(tuple(dilations), scores.device))
    return par_iteration_eager(scores, weights, dilations)


def par_iteration_eager(scores: torch.Tensor, weights: torch.Tensor, dilations: list[int]) -> torch.Tensor:
    """`par_iteration` in eager PyTorch, built for a CPU's cache: the maps accumulate neighbour by neighbour."""
    refined = torch.zeros_like(scores)
    # accumulate neighbour by neighbour: never materializes the [B, C, 8*D, H, W] neighbour stack
    for view, weight in zip(ring_views(scores, dilations), weights.unsqueeze(2)):
        refined.addcmul_(view, weight)
    return refined
