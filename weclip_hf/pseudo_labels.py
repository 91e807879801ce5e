"""The pseudo-label pipeline as named stages (DESIGN Part 1, CAM steps 1-7), for all (image, class) pairs at
once.

`WeCLIPForSemanticSegmentation.generate_pseudo_labels` calls them in this order, and so do the benchmark
(to time each one) and the diagnostics:

1. `plan_pairs`: which (image, present class) pairs get a CAM (the pipeline's only host sync);
2. `pair_gradcams`: one GradCAM per pair from one backward through the last CLIP block, which runs once per
   image (`weclip_hf.last_block`);
3. `patch_attention_maps`, then an affinity (`weclip_hf.affinity`: `cam_affinity` here picks WeCLIP's), then
   its `transition_matrix`;
4. `weclip_hf.cam`: box masks, `refine_cams` (propagation), `upsample_normalized`;
5. `class_scores`, `background_margins`, PAR (`weclip_hf.par.par_refine`) on the margins, `labels_from_margins`;
   `dense_class_cams` for the output.

Each stage takes its inputs explicitly (tensors, counts, thresholds), so a variant of the method composes
them differently: GradCAM on another block's tokens, CAMs weighted before propagation, no box mask, another
affinity. The stages expect float32 inputs outside autocast (`generate_pseudo_labels` ensures it);
`pair_gradcams` turns autocast off itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .affinity import CAMAffinity, mean_attention_affinity, rfm_affinity
from .cam import gradcam_from_weights, minmax_normalize
from .chunking import concat_chunks
from .configuration_weclip import WeCLIPConfig

# The last CLIP block as GradCAM runs it (the model's `last_block_pair_embeddings`; `pair_gradcams` says what goes in
# and out): (tokens, pair image index, (pair slots, most pairs of one image)) -> (activations, shift, pair
# embeddings, attention).
LastBlockPairs = Callable[
    [torch.Tensor, torch.Tensor, tuple[torch.Tensor, int]],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
]


@dataclass(frozen=True)
class PairPlan:
    """The (image, present class) pairs of a batch, ordered by image, then by ascending class.

    Built once per batch by `plan_pairs`; every tensor lives on the batch's device.
    """

    image: torch.Tensor  # [P] int64 image index of each pair
    class_index: torch.Tensor  # [P] int64 0-based foreground class of each pair
    slot: torch.Tensor  # [P] int64 rank of the class among its image's present classes
    present: torch.Tensor  # [B, C] bool multi-hot labels
    max_classes: int  # K: the most classes present in one image (0 when no image has any)

    @property
    def num_pairs(self) -> int:
        return self.image.shape[0]

    @property
    def num_images(self) -> int:
        return self.present.shape[0]

    @property
    def num_classes(self) -> int:
        return self.present.shape[1]


@dataclass
class PairGradCAMs:
    """`pair_gradcams`' result: per pair, the GradCAM; per image, what the same pass of the last block gives."""

    cams: torch.Tensor  # [P, h, w] after the double min-max normalization
    text_probs: torch.Tensor  # [P, C + Nb] softmax over the image's present classes + background words
    last_attention: torch.Tensor  # [B, 1+N, 1+N] head-averaged attention of the last block, per image


def attention_maps_needed(config: WeCLIPConfig, use_rfm: bool) -> int:
    """How many head-averaged attention maps `forward_clip_features` must collect for the pseudo labels.

    The affinity uses the last ``config.attention_num_maps`` (``config.rfm_num_maps`` with the RFM) maps of
    all L blocks; the last block's map comes from the GradCAM pass (`pair_gradcams`), so one fewer is
    collected from the first L-1 blocks.
    """
    return (config.rfm_num_maps if use_rfm else config.attention_num_maps) - 1


def plan_pairs(class_labels: torch.Tensor, device: torch.device | str) -> PairPlan:
    """The pair plan of multi-hot ``class_labels`` [B, C] (> 0.5 means present), on ``device``.

    Built on the host: the pseudo-label path's only host sync (none at all when the labels arrive on the
    CPU, as from a DataLoader); the indices reach ``device`` by non-blocking copies.
    """
    present_host = class_labels.detach().cpu() > 0.5
    pairs = present_host.nonzero()
    max_classes = int(present_host.sum(1).max()) if len(pairs) else 0
    slot = present_host.long().cumsum(1)[pairs[:, 0], pairs[:, 1]] - 1  # rank of the class in its image
    image, class_index, slot = (t.to(device, non_blocking=True) for t in (pairs[:, 0], pairs[:, 1], slot))
    return PairPlan(image, class_index, slot, present_host.to(device, non_blocking=True), max_classes)


def pair_gradcams(
    last_block: LastBlockPairs,
    block_input: torch.Tensor,
    class_embeds: torch.Tensor,
    background_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    plan: PairPlan,
    grid: tuple[int, int],
    chunk_size: int | None = None,
) -> PairGradCAMs:
    """GradCAM of every pair, in float32: the last block runs once per image, one backward per chunk of images.

    Args:
        last_block: (tokens [B, 1+N, D], pair image index [P], (each pair's rank within its image [P], the
            most pairs of one image): the plan's ``slot`` and ``max_classes``, each slot used once per image)
            -> (GradCAM activations [B, 1+N, D] (the block's first LayerNorm output), a zero shift [P, D]
            requiring grad, L2-normalized image embedding of each pair's image [P, E] as a function of the shift
            added to the patch activations, head-averaged attention [B, 1+N, 1+N]); the model's
            `last_block_pair_embeddings`.
        block_input: [B, 1+N, D] tokens entering the last block (WeCLIP: the output of block L-1).
        class_embeds: [C, E] and background_embeds: [Nb, E] text embeddings. logit_scale: CLIP's log scale.
        chunk_size: run the images this many at a time, one backward each (`weclip_hf.chunking`: on a CPU
            the chunks' temporaries stay in the cache); None: all at once; below 1 refused. Chunking reads the
            plan's image indices on the host (a sync on an accelerator) and needs the pairs ordered by image. The
            chunks' GradCAMs equal the whole batch's up to float32 summation order (~1e-6), which can flip pseudo
            labels at near-ties.
    Returns:
        `PairGradCAMs`. Each pair's target is the softmax probability of its class over the image's present
        classes and the background words; the pairs' targets are summed (each has its own shift, so the
        gradients do not interact). The gradient w.r.t. a pair's shift is the sum over patch tokens of its
        gradient w.r.t. the activations: divided by N, GradCAM's channel weights.
    """
    text = torch.cat([class_embeds, background_embeds]).float()
    b = block_input.shape[0]
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(
            f"chunk_size must be at least 1 (got {chunk_size}); None runs the whole batch at once."
        )
    chunk = b if chunk_size is None else chunk_size
    if chunk >= b:
        return _gradcams_of_images(last_block, block_input, text, logit_scale, plan, grid)
    if plan.num_pairs and bool((plan.image[1:] < plan.image[:-1]).any()):
        raise ValueError("plan.image must be sorted (pairs ordered by image) to run pair_gradcams in chunks.")
    starts = torch.arange(0, b + chunk, chunk, device=plan.image.device).clamp_(max=b)
    pair_ends = torch.searchsorted(plan.image, starts).tolist()  # the first pair of each chunk's first image
    parts = []
    for index, start in enumerate(range(0, b, chunk)):
        stop = min(start + chunk, b)
        first, last = pair_ends[index], pair_ends[index + 1]
        part = PairPlan(
            plan.image[first:last] - start,
            plan.class_index[first:last],
            plan.slot[first:last],
            plan.present[start:stop],
            int(plan.present[start:stop].sum(1).max()),  # the chunk's own most classes per image
        )
        parts.append(_gradcams_of_images(last_block, block_input[start:stop], text, logit_scale, part, grid))
    return PairGradCAMs(
        concat_chunks([part.cams for part in parts]),
        concat_chunks([part.text_probs for part in parts]),
        concat_chunks([part.last_attention for part in parts]),
    )


def _gradcams_of_images(
    last_block: LastBlockPairs,
    block_input: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    plan: PairPlan,
    grid: tuple[int, int],
) -> PairGradCAMs:
    """`pair_gradcams` of one chunk of images, ``text`` [C + Nb, E] the class then background embeddings."""
    # the background words are always allowed
    words = plan.present.new_ones(plan.num_pairs, text.shape[0] - plan.num_classes)
    allowed = torch.cat([plan.present[plan.image], words], dim=1)  # [P, C + Nb]
    with torch.enable_grad(), torch.autocast(block_input.device.type, enabled=False):
        activations, shift, image_embeds, last_attention = last_block(
            block_input, plan.image, (plan.slot, plan.max_classes)
        )
        logits = logit_scale.float().exp() * image_embeds @ text.t()  # [P, C + Nb]
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        (patch_grad_sum,) = torch.autograd.grad(probs.gather(1, plan.class_index[:, None]).sum(), shift)
    patches = activations[:, 1:].detach().float()
    cams = gradcam_from_weights(patches[plan.image], patch_grad_sum / patches.shape[1], grid)
    return PairGradCAMs(cams, probs.detach(), last_attention.detach())


def patch_attention_maps(block_attention: list[torch.Tensor], last_attention: torch.Tensor) -> torch.Tensor:
    """The candidate maps of the affinity: patch-to-patch parts of the collected blocks' maps, then the last
    block's: [B, L, N, N] float32, oldest first.

    Args:
        block_attention: head-averaged maps [B, 1+N, 1+N] of the last blocks before the final one.
        last_attention: [B, 1+N, 1+N] the last block's map per image (`PairGradCAMs.last_attention`).
    """
    return torch.stack([a[:, 1:, 1:].float() for a in (*block_attention, last_attention)], dim=1)


def cam_affinity(
    maps: torch.Tensor, config: WeCLIPConfig, use_rfm: bool, decoder_affinity: torch.Tensor | None = None
) -> CAMAffinity:
    """WeCLIP's affinity: the RFM choice among the last ``config.rfm_num_maps`` maps (with
    ``decoder_affinity`` [B, N, N], detached), or the mean of the last ``config.attention_num_maps``."""
    if not use_rfm:
        return mean_attention_affinity(maps, config.attention_num_maps)
    if decoder_affinity is None:
        raise ValueError("use_rfm=True needs decoder_affinity ([B, N, N], the decoder's sigmoid(F^T F)).")
    return rfm_affinity(maps, config.rfm_num_maps, decoder_affinity)


def class_scores(refined: torch.Tensor, plan: PairPlan, bg_exponent: float = 1.0) -> torch.Tensor:
    """Per image, [background, present classes in ascending order] scores: [B, 1 + K, H, W].

    Args:
        refined: [P, H, W] normalized refined CAMs. bg_exponent: background = ``(1 - max over the image's
            classes) ** bg_exponent`` (all ones for an image without classes). Unused slots stay 0.
    """
    scores = refined.new_zeros(plan.num_images, plan.max_classes + 1, *refined.shape[-2:])
    scores[plan.image, plan.slot + 1] = refined
    if plan.max_classes:
        background = 1 - scores[:, 1:].amax(dim=1, keepdim=True)
    else:
        background = torch.ones_like(scores[:, :1])
    scores[:, :1] = background.clamp(min=0) ** bg_exponent
    return scores


def background_margins(scores: torch.Tensor, plan: PairPlan) -> torch.Tensor:
    """Each class score less its image's background score: `class_scores`' [B, 1 + K, H, W] -> [B, K, H, W],
    0 in the slots an image does not use.

    PAR is linear in the maps it refines, so the refined margins are the refined class scores less the refined
    background: `labels_from_margins` labels every pixel as the argmax of the K + 1 refined scores does (up to
    float rounding: the same labels at all but near-tied pixels), with one map fewer per image to refine."""
    margins = scores[:, 1:] - scores[:, :1]
    return margins.masked_fill_(~_used_slots(plan, margins.shape[1], margins.device)[:, :, None, None], 0.0)


def labels_from_margins(margins: torch.Tensor, plan: PairPlan) -> torch.Tensor:
    """Pseudo labels [B, H, W] from (refined) `background_margins` [B, K, H, W]: the background where no used
    slot's margin is above 0, else the class of the largest (`labels_from_scores` with a zero background)."""
    return labels_from_scores(F.pad(margins, (0, 0, 0, 0, 1, 0)), plan)


def labels_from_scores(scores: torch.Tensor, plan: PairPlan) -> torch.Tensor:
    """Argmax of `class_scores`-ordered scores [B, 1 + K, H, W] over each image's own slots -> pseudo labels
    [B, H, W] int64 (0 = background, k = class k; unused slots never win)."""
    b, slots = scores.shape[:2]
    slot_class = torch.zeros(b, slots, dtype=torch.long, device=scores.device)
    slot_class[plan.image, plan.slot + 1] = plan.class_index + 1
    valid = F.pad(_used_slots(plan, slots - 1, scores.device), (1, 0), value=True)  # background, then classes
    # slots innermost: the CPU's argmax over a short innermost dim is ~6x faster than over dim 1
    slots_last = scores.permute(0, 2, 3, 1).contiguous()
    winner = slots_last.masked_fill_(~valid[:, None, None, :], float("-inf")).argmax(dim=-1)
    return slot_class.gather(1, winner.flatten(1)).view_as(winner)


def _used_slots(plan: PairPlan, slots: int, device: torch.device) -> torch.Tensor:
    """[B, slots] bool on ``device``: which class slots each image uses (its present classes take the first
    ones)."""
    return torch.arange(slots, device=device) < plan.present.sum(1, keepdim=True).to(device)


def dense_class_cams(refined_grid: torch.Tensor, plan: PairPlan) -> torch.Tensor:
    """Per image and foreground class, the normalized refined CAM on the grid, 0 for absent classes:
    [P, h, w] -> [B, C, h, w]."""
    dense = refined_grid.new_zeros(plan.num_images, plan.num_classes, *refined_grid.shape[-2:])
    dense[plan.image, plan.class_index] = minmax_normalize(refined_grid)
    return dense


__all__ = [
    "PairPlan",
    "PairGradCAMs",
    "attention_maps_needed",
    "plan_pairs",
    "pair_gradcams",
    "patch_attention_maps",
    "cam_affinity",
    "class_scores",
    "background_margins",
    "labels_from_margins",
    "labels_from_scores",
    "dense_class_cams",
]
