"""WeCLIP training losses: balanced segmentation CE and the decoder-affinity loss (DESIGN Part 1)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .patch_grid import grid_neighbourhood


def _global_count(count: torch.Tensor, across_processes: bool) -> tuple[torch.Tensor, int]:
    """``(count summed over all processes, number of processes)``; ``(count, 1)`` when not distributed.

    A loss ``world * local_sum / global_count`` makes DDP's gradient average equal to the gradient of
    the global-batch loss: the same result as one process with the whole batch (as DETR's losses do).
    """
    if not (across_processes and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return count, 1
    count = count.detach().clone()
    dist.all_reduce(count)
    return count, dist.get_world_size()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, across_processes: bool = False) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (of the whole global batch if ``across_processes``); 0 (not NaN)
    when the mask is empty."""
    mask = mask.to(values.dtype)
    count, world = _global_count(mask.sum(), across_processes)
    return world * (values * mask).sum() / count.clamp(min=1.0)


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, across_processes: bool = False
) -> torch.Tensor:
    """``0.5 * CE(bg pixels) + 0.5 * CE(fg pixels)``, each a mean over its own pixels of the whole batch.

    Args:
        logits: [B, C, h, w], upsampled bilinearly (align_corners=False) to the label size.
        labels: [B, H, W] int, ``ignore_index`` ignored.
        across_processes: normalise by the pixel counts of the global batch (distributed training;
            every process must call it).
    A batch with no background (or no foreground) pixel contributes 0 for that half (the official code
    gives NaN there).
    """
    # channels last: the class dimension innermost, where the CPU's log-softmax is fastest (no transposing copy)
    logits = logits.contiguous(memory_format=torch.channels_last)
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = labels != ignore_index
    target = torch.where(valid, labels, torch.zeros_like(labels)).long()
    log_probs = logits.float().permute(0, 2, 3, 1).log_softmax(dim=-1)  # [B, H, W, C]
    ce = -log_probs.gather(-1, target[..., None])[..., 0]
    bg = valid & (labels == 0)
    fg = valid & (labels != 0)
    return 0.5 * _masked_mean(ce, bg, across_processes) + 0.5 * _masked_mean(ce, fg, across_processes)


def affinity_targets(
    labels: torch.Tensor, grid: tuple[int, int], radius: int = 8, ignore_index: int = 255
) -> torch.Tensor:
    """Pairwise affinity labels on the patch grid: [B, H, W] -> [B, N, N] int8.

    Labels are downsampled by nearest neighbour (cell (i, j) takes pixel (floor(i*H/h), floor(j*W/w))).
    1 where two cells share a label, 0 where they differ, -1 (ignored) where either is ``ignore_index``
    or the cells are farther apart than ``radius`` (Chebyshev distance; pairs (i, i) included).
    """
    h, w = grid
    small = F.interpolate(labels[:, None].float(), size=grid, mode="nearest")[:, 0].long().flatten(1)
    same = small[:, :, None] == small[:, None, :]
    ignored = (small == ignore_index)[:, :, None] | (small == ignore_index)[:, None, :]
    near = grid_neighbourhood(h, w, radius, labels.device)
    targets = same.to(torch.int8)
    return targets.masked_fill(ignored | ~near, -1)


def affinity_loss(
    affinity: torch.Tensor, targets: torch.Tensor, across_processes: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``0.5 * sum_pos(1 - A) / (n_pos + 1) + 0.5 * sum_neg(A) / (n_neg + 1)`` over the whole batch.

    Args:
        affinity: [B, N, N] decoder affinity. targets: [B, N, N] from `affinity_targets`.
        across_processes: counts of the global batch (distributed training; every process must call it).
    Returns:
        loss, n_pos + 1, n_neg + 1 (the counts as the official code returns them).
    """
    pos = (targets == 1).to(affinity.dtype)
    neg = (targets == 0).to(affinity.dtype)
    pos_count, world = _global_count(pos.sum(), across_processes)
    neg_count, _ = _global_count(neg.sum(), across_processes)
    pos_count, neg_count = pos_count + 1, neg_count + 1
    pos_loss = world * (pos * (1 - affinity)).sum() / pos_count
    neg_loss = world * (neg * affinity).sum() / neg_count
    return 0.5 * pos_loss + 0.5 * neg_loss, pos_count, neg_count
