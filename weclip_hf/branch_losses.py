"""WeCLIP+ training losses: Dice, the cross-branch balanced CE, the confident-pixel self-training overwrite,
and their combination with WeCLIP's balanced CE and affinity loss (DESIGN-weclip-plus §11)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .configuration_weclip_plus import WeCLIPPlusConfig
from .losses import affinity_loss, affinity_targets, segmentation_loss, summed_over_processes
from .upsampling import upsample_bilinear

DICE_EPS = 1e-7


def dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, across_processes: bool = False
) -> torch.Tensor:
    """``1 - mean_k 2 * inter_k / (union_k + 1e-7)`` over ALL K classes, sums over the batch and the pixels.

    Args:
        logits: [B, K, H, W] at the label size. labels: [B, H, W] int, ``ignore_index`` excluded.
        across_processes: sums over the global batch (distributed training; every process must call it).
    ``inter_k = sum(p_k * [y = k])``, ``union_k = sum(p_k) + sum([y = k])``, p = softmax over K. A class
    absent from the labels contributes ``2 * 0 / (sum p_k + 1e-7) = 0`` to the mean (a constant offset, as in
    the official code); no term can be NaN.
    """
    valid = labels != ignore_index
    probs = logits.float().softmax(dim=1)
    inter, label_count = _class_sums(probs, labels, valid)
    prob_sum = (probs * valid[:, None]).sum(dim=(0, 2, 3))
    sums = torch.stack([inter, prob_sum, label_count])  # [3, K]
    total, world = summed_over_processes(sums, across_processes)
    if world > 1:  # the global batch's sums, differentiable through this process's share
        sums = sums + (total - sums.detach())
    inter, prob_sum, label_count = sums.unbind()
    dice = 1 - (2 * inter / (prob_sum + label_count + DICE_EPS)).mean()
    # DDP averages the processes' gradients: each carries `world` times its share of the global Dice's (whose value
    # every process returns)
    return dice if world == 1 else dice.detach() + world * (dice - dice.detach())


def _class_sums(
    probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``sum_p p_k * [y_p = k]``, ``sum_p [y_p = k]``) over the valid pixels, each [K]: `_class_sums_masked` on
    CUDA, where ``scatter_add_`` makes every pixel's atomic add collide on K addresses (14% of a WeCLIP+ step on
    an H200); `_class_sums_scattered` elsewhere (faster on a CPU)."""
    return (_class_sums_masked if probs.is_cuda else _class_sums_scattered)(probs, labels, valid)


def _class_sums_masked(probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """`_class_sums` as masked sums over [B, K, H, W] (deterministic, no host sync)."""
    k = probs.shape[1]
    is_label = (labels[:, None] == torch.arange(k, device=labels.device).view(1, k, 1, 1)) & valid[:, None]
    return torch.where(is_label, probs, 0).sum(dim=(0, 2, 3)), is_label.sum(dim=(0, 2, 3)).to(probs.dtype)


def _class_sums_scattered(probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """`_class_sums` by ``scatter_add_`` of each pixel's probability of its label."""
    k = probs.shape[1]
    target = torch.where(valid, labels, torch.zeros_like(labels)).long()
    weight = valid.flatten().to(probs.dtype)
    true_prob = probs.gather(1, target[:, None]).flatten() * weight
    flat = target.flatten()
    return probs.new_zeros(k).scatter_add_(0, flat, true_prob), probs.new_zeros(k).scatter_add_(
        0, flat, weight
    )


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
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each branch trained on the other's prediction: (balanced CE of the CLIP branch against the DINO
    branch's argmax, balanced CE of the DINO branch against the CLIP branch's argmax), at the label size.

    Args:
        logits_clip, logits_dino: [B, K, h, w] branch logits, upsampled bilinearly (align_corners=False) to
            ``size`` (H, W; None: their own), the targets' argmax taken there (`segmentation_loss` upsamples
            the scores inside, without keeping them).
        ignore: [B, H, W] bool, pixels left out of both terms (e.g. crop padding); None: every pixel counts.
    A term whose target has no background (or no foreground) pixel contributes 0 for that half (the official
    code gives NaN). The targets carry no gradient.
    """
    size = tuple(size or logits_clip.shape[-2:])
    with torch.no_grad():
        targets = [
            branch_predictions(upsample_bilinear(x.float(), size))[1] for x in (logits_dino, logits_clip)
        ]
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
        config: the weights, thresholds and ignore index (``semantic_loss_ignore_index``) of the losses.
        logits: [B, K, h, w] the prediction (weighted sum of the branches) on the patch grid; logits_clip,
            logits_dino: [B, K, h, w] the branches. Each is upsampled bilinearly (align_corners=False) to the
            label size.
        decoder_affinity: [B, h*w, h*w]. labels: [B, H, W] pseudo (or pixel) labels, the config's
            ``semantic_loss_ignore_index`` ignored.
        self_training: overwrite confident pixels (`self_training_labels`) before the segmentation and Dice
            losses (the caller decides from `config.self_training_start_step`).
        across_processes: the CE and affinity terms normalised by the counts of the global batch, the Dice term's
            sums over it (DDP).
    """
    ignore_index = config.semantic_loss_ignore_index
    grid = tuple(logits.shape[-2:])
    size = labels.shape[-2:]
    full = upsample_bilinear(logits.float(), tuple(size))
    aff_targets = affinity_targets(labels, grid, config.affinity_radius, ignore_index)
    ignore = labels == ignore_index
    overwritten = None
    if self_training:
        labels, overwritten = self_training_labels(labels, full, config.self_training_threshold, ignore_index)
    seg = segmentation_loss(logits, labels, ignore_index, across_processes)  # upsamples inside, chunk-wise
    dice = dice_loss(full, labels, ignore_index, across_processes)
    aff, _, _ = affinity_loss(decoder_affinity, aff_targets, across_processes)
    clip_from_dino, dino_from_clip = cross_branch_losses(
        logits_clip, logits_dino, ignore, ignore_index, across_processes, size=tuple(size)
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
