"""WeCLIP+ training losses: Dice, the cross-branch balanced CE, the confident-pixel self-training overwrite,
and their combination with WeCLIP's balanced CE and affinity loss (DESIGN-weclip-plus §11)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .configuration_weclip_plus import WeCLIPPlusConfig
from .losses import affinity_loss, affinity_targets, segmentation_loss
from .upsampling import upsample_bilinear

DICE_EPS = 1e-7


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """``1 - mean_k 2 * inter_k / (union_k + 1e-7)`` over ALL K classes, sums over the batch and the pixels.

    Args:
        logits: [B, K, H, W] at the label size. labels: [B, H, W] int, ``ignore_index`` excluded.
    ``inter_k = sum(p_k * [y = k])``, ``union_k = sum(p_k) + sum([y = k])``, p = softmax over K. A class
    absent from the labels contributes ``2 * 0 / (sum p_k + 1e-7) = 0`` to the mean (a constant offset, as in
    the official code); no term can be NaN. Sums are over this process's batch.
    """
    k = logits.shape[1]
    valid = labels != ignore_index
    target = torch.where(valid, labels, torch.zeros_like(labels)).long().flatten()  # [B*H*W]
    weight = valid.flatten().float()
    probs = logits.float().softmax(dim=1)
    true_prob = probs.gather(1, target.view_as(labels)[:, None]).flatten() * weight
    inter = _ClassSums.apply(true_prob, target, k)
    label_count = torch.bincount(target, weights=weight, minlength=k).to(probs.dtype)
    prob_sum = (probs * valid[:, None]).sum(dim=(0, 2, 3))
    return 1 - (2 * inter / (prob_sum + label_count + DICE_EPS)).mean()


class _ClassSums(torch.autograd.Function):
    """``sums[k] = sum of values[i] over i with classes[i] == k`` (differentiable in ``values``): `torch.bincount`,
    a per-block histogram on CUDA, where ``scatter_add_`` makes every pixel's atomic add collide on K addresses."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        ctx.save_for_backward(classes)
        return torch.bincount(classes, weights=values, minlength=num_classes).to(values.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sums: torch.Tensor):
        (classes,) = ctx.saved_tensors
        return grad_sums[classes], None, None


def branch_predictions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max softmax probability, its class) per pixel of [B, K, H, W] logits: two [B, H, W] tensors.

    Taken on the probabilities as the official ``torch.max(F.softmax(x, 1), 1)`` (on exact float ties the
    argmax of the probabilities may differ from that of the logits)."""
    confidence, prediction = logits.float().softmax(dim=1).max(dim=1)
    return confidence, prediction


def cross_branch_losses(
    logits_clip: torch.Tensor,
    logits_dino: torch.Tensor,
    ignore: torch.Tensor | None = None,
    ignore_index: int = 255,
    across_processes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each branch trained on the other's prediction: (balanced CE of the CLIP branch against the DINO
    branch's argmax, balanced CE of the DINO branch against the CLIP branch's argmax).

    Args:
        logits_clip, logits_dino: [B, K, H, W] branch logits at the label size.
        ignore: [B, H, W] bool, pixels left out of both terms (e.g. crop padding); None: every pixel counts.
    A term whose target has no background (or no foreground) pixel contributes 0 for that half (the official
    code gives NaN). The targets carry no gradient.
    """
    targets = [branch_predictions(x.detach())[1] for x in (logits_dino, logits_clip)]
    if ignore is not None:
        targets = [t.masked_fill(ignore, ignore_index) for t in targets]
    return (
        segmentation_loss(logits_clip, targets[0], ignore_index, across_processes),
        segmentation_loss(logits_dino, targets[1], ignore_index, across_processes),
    )


def self_training_labels(
    labels: torch.Tensor, logits: torch.Tensor, threshold: float, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels with every pixel the prediction is confident about (max softmax > ``threshold``) replaced
    by the predicted class; ignored pixels stay ignored.

    Args: labels: [B, H, W] pseudo labels. logits: [B, K, H, W] prediction at the label size.
    Returns: (new labels [B, H, W], overwritten [B, H, W] bool).
    """
    confidence, prediction = branch_predictions(logits.detach())
    overwrite = (confidence > threshold) & (labels != ignore_index)
    return torch.where(overwrite, prediction.to(labels.dtype), labels), overwrite


@dataclass
class WeCLIPPlusLosses:
    """The WeCLIP+ loss terms of one batch."""

    loss: torch.Tensor  # seg + w_aff * affinity + w_cross * (clip_from_dino + dino_from_clip) + w_dice * dice
    seg_loss: torch.Tensor  # balanced CE of the prediction against `labels`
    dice_loss: torch.Tensor
    affinity_loss: torch.Tensor  # on the labels BEFORE the self-training overwrite
    clip_from_dino_loss: torch.Tensor  # CLIP branch against the DINO branch's argmax
    dino_from_clip_loss: torch.Tensor  # DINO branch against the CLIP branch's argmax
    labels: torch.Tensor  # [B, H, W] the labels of seg_loss and dice_loss (after the overwrite, if any)
    self_training_mask: torch.Tensor | None  # [B, H, W] bool, the overwritten pixels (None: no overwrite)


def weclip_plus_losses(
    config: WeCLIPPlusConfig,
    logits: torch.Tensor,
    logits_clip: torch.Tensor,
    logits_dino: torch.Tensor,
    decoder_affinity: torch.Tensor,
    labels: torch.Tensor,
    self_training: bool = False,
    across_processes: bool = False,
) -> WeCLIPPlusLosses:
    """All WeCLIP+ losses, in the official order: affinity targets from the labels as given, then (when
    ``self_training``) the confident-pixel overwrite, then the losses on the prediction.

    Args:
        logits: [B, K, h, w] the prediction (weighted sum of the branches) on the patch grid; logits_clip,
            logits_dino: [B, K, h, w] the branches. Each is upsampled bilinearly (align_corners=False) to the
            label size.
        decoder_affinity: [B, h*w, h*w]. labels: [B, H, W] pseudo (or pixel) labels, ``ignore_index`` ignored.
        self_training: overwrite confident pixels (`self_training_labels`) before the segmentation and Dice
            losses (the caller decides from `config.self_training_start_step`).
        across_processes: normalise the CE and affinity terms by the counts of the global batch (DDP).
    """
    ignore_index = config.semantic_loss_ignore_index
    grid = tuple(logits.shape[-2:])
    size = labels.shape[-2:]
    full, full_clip, full_dino = (
        upsample_bilinear(x.float(), tuple(size)) for x in (logits, logits_clip, logits_dino)
    )
    aff_targets = affinity_targets(labels, grid, config.affinity_radius, ignore_index)
    ignore = labels == ignore_index
    overwritten = None
    if self_training:
        labels, overwritten = self_training_labels(labels, full, config.self_training_threshold, ignore_index)
    seg = segmentation_loss(full, labels, ignore_index, across_processes)
    dice = dice_loss(full, labels, ignore_index)
    aff, _, _ = affinity_loss(decoder_affinity, aff_targets, across_processes)
    clip_from_dino, dino_from_clip = cross_branch_losses(
        full_clip, full_dino, ignore, ignore_index, across_processes
    )
    loss = (
        seg
        + config.affinity_loss_weight * aff
        + config.cross_branch_loss_weight * (clip_from_dino + dino_from_clip)
        + config.dice_loss_weight * dice
    )
    return WeCLIPPlusLosses(
        loss=loss,
        seg_loss=seg,
        dice_loss=dice,
        affinity_loss=aff,
        clip_from_dino_loss=clip_from_dino,
        dino_from_clip_loss=dino_from_clip,
        labels=labels,
        self_training_mask=overwritten,
    )


__all__ = [
    "dice_loss",
    "branch_predictions",
    "cross_branch_losses",
    "self_training_labels",
    "weclip_plus_losses",
    "WeCLIPPlusLosses",
]
