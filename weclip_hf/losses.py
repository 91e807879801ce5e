"""WeCLIP training losses: balanced segmentation CE and the decoder-affinity loss (DESIGN Part 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .chunking import images_per_chunk
from .patch_grid import grid_neighbourhood
from .upsampling import upsample_bilinear_channels_last, upsample_bilinear_channels_last_adjoint

# the loss terms of a model output (WeCLIP's two, then WeCLIP+'s, absent from WeCLIP's output) and their names in
# messages; the training logs give each beside the total ``loss``
LOSS_TERMS = {
    "seg_loss": "segmentation",
    "affinity_loss": "affinity",
    "dice_loss": "Dice",
    "clip_from_dino_loss": "CLIP-from-DINO cross-branch",
    "dino_from_clip_loss": "DINO-from-CLIP cross-branch",
}


def present_losses(out, names) -> dict[str, torch.Tensor]:
    """The losses of ``out`` among ``names`` that it has (WeCLIP's output lacks WeCLIP+'s terms), in that order."""
    return {name: getattr(out, name) for name in names if getattr(out, name, None) is not None}


if TYPE_CHECKING:
    from .configuration_weclip import WeCLIPConfig


def summed_over_processes(count: torch.Tensor, across_processes: bool) -> tuple[torch.Tensor, int]:
    """``(count summed over all processes, detached, number of processes)``; ``(count, 1)`` (as given) when not
    distributed.

    A loss ``world * local_sum / global_count`` makes DDP's gradient average equal to the gradient of
    the global-batch loss: the same result as one process with the whole batch (as DETR's losses do).
    """
    if not (across_processes and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return count, 1
    count = count.detach().clone()
    dist.all_reduce(count)
    return count, dist.get_world_size()


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
    gives NaN there). The full-resolution class scores are never kept for the backward
    (`_UpsampledCrossEntropy`).
    """
    valid = labels != ignore_index
    bg = valid & (labels == 0)
    fg = valid & (labels != 0)
    dtype = _score_dtype(logits)
    bg_count, world = summed_over_processes(bg.sum().to(dtype), across_processes)
    fg_count, _ = summed_over_processes(fg.sum().to(dtype), across_processes)
    # each pixel's share of the loss: 0.5 / (its half's pixel count), 0 for ignored pixels
    weights = world * 0.5 * (bg / bg_count.clamp(min=1.0) + fg / fg_count.clamp(min=1.0))
    target = torch.where(valid, labels, torch.zeros_like(labels)).long()
    return _UpsampledCrossEntropy.apply(logits, target, weights)


class _UpsampledCrossEntropy(torch.autograd.Function):
    """``sum_p weights_p * CE(upsample(logits)_p, target_p)`` over the pixels p of the labels' size, with the
    bilinear upsampling (align_corners=False) inside: the forward keeps only the per-pixel log-sum-exp, the
    backward remakes the upsampled scores. Both run a few images at a time on a CPU (`weclip_hf.chunking`: the
    [C, H, W] float32 scores of a chunk within the budget), so the batch's full-resolution scores, their
    log-probabilities and their gradient never exist at once (on an accelerator: one chunk)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        chunk = _ce_chunk(logits, target)
        total, lse = logits.new_zeros((), dtype=_score_dtype(logits)), []
        for z, t, w in zip(logits.split(chunk), target.split(chunk), weights.split(chunk)):
            scores = _upsampled_scores(z, t.shape[-2:])  # [b, H, W, C] float32
            index = t[..., None]
            # log_softmax is one fused pass on a CPU (logsumexp four: max, subtract, exp, sum); the log-sum-exp
            # the backward needs is then the target's score plus its negative log-likelihood
            nll = torch.log_softmax(scores, dim=-1).gather(-1, index)[..., 0].neg_()
            # summed out of place: torch 2.11's Dynamo gave the logits a zero gradient where the Function's output
            # was accumulated in place (the same additions in the same order: the same bits)
            total = total + (w * nll).sum()
            lse.append(nll.add_(scores.gather(-1, index)[..., 0]))
        ctx.save_for_backward(logits, target, weights, torch.cat(lse))
        ctx.chunk = chunk
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        logits, target, weights, lse = ctx.saved_tensors
        grads = []
        for z, t, w, s in zip(*(x.split(ctx.chunk) for x in (logits, target, weights, lse))):
            scaled = (w * grad_total).to(_score_dtype(z))[..., None]  # [b, H, W, 1]
            # d/dscores = weight * (softmax - onehot(target)), in place on the remade scores
            grad = _upsampled_scores(z, t.shape[-2:]).sub_(s[..., None]).exp_().mul_(scaled)
            grad.scatter_add_(-1, t[..., None], -scaled)
            grads.append(upsample_bilinear_channels_last_adjoint(grad, z.shape[-2:]).to(z.dtype))
        return torch.cat(grads), None, None


def _upsampled_scores(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of [b, C, h, w] logits to ``size``, as [b, H, W, C] in at least
    float32: the class dimension innermost (channels last), where the CPU's class reductions are fastest
    (`weclip_hf.upsampling`: matrix products, whose adjoint the backward takes)."""
    return upsample_bilinear_channels_last(logits.to(_score_dtype(logits)), tuple(size))


def _score_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 logits (half-precision logits are scored in float32)."""
    return torch.promote_types(logits.dtype, torch.float32)


def _ce_chunk(logits: torch.Tensor, target: torch.Tensor) -> int:
    """Images per chunk of `_UpsampledCrossEntropy`: two float32 [C, H, W] temporaries per image in the budget."""
    return images_per_chunk(logits.shape[0], 2 * logits.shape[1] * target[0].numel() * 4, logits.device)


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
    pos_count, world = summed_over_processes(pos.sum(), across_processes)
    neg_count, _ = summed_over_processes(neg.sum(), across_processes)
    pos_count, neg_count = pos_count + 1, neg_count + 1
    pos_loss = world * (pos * (1 - affinity)).sum() / pos_count
    neg_loss = world * (neg * affinity).sum() / neg_count
    return 0.5 * pos_loss + 0.5 * neg_loss, pos_count, neg_count


def weclip_loss(
    config: WeCLIPConfig,
    logits: torch.Tensor,
    decoder_affinity: torch.Tensor,
    labels: torch.Tensor,
    across_processes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """WeCLIP's training loss on ``labels`` [B, H, W] (pseudo or pixel labels): ``(seg + affinity_loss_weight *
    aff, seg, aff)``, the `segmentation_loss` of ``logits`` [B, K, h, w] and the `affinity_loss` of
    ``decoder_affinity`` [B, h*w, h*w] against the labels' `affinity_targets`."""
    ignore_index = config.semantic_loss_ignore_index
    seg = segmentation_loss(logits, labels, ignore_index, across_processes)
    targets = affinity_targets(labels, tuple(logits.shape[-2:]), config.affinity_radius, ignore_index)
    aff, _, _ = affinity_loss(decoder_affinity, targets, across_processes)
    return seg + config.affinity_loss_weight * aff, seg, aff
