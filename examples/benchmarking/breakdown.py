"""Where a training step's time goes: its pieces (the CLIP forward, the stages of `generate_pseudo_labels`, the
decoder's training) timed one by one on the model's own intermediates, each checked to reproduce the model."""

from __future__ import annotations

import torch

from weclip_hf.affinity import transition_matrix
from weclip_hf.cam import cam_box_masks, refine_cams, upsample_normalized
from weclip_hf.losses import affinity_loss, affinity_targets, segmentation_loss
from weclip_hf.par import par_refine
from weclip_hf.pseudo_labels import (
    attention_maps_needed,
    background_margins,
    cam_affinity,
    class_scores,
    labels_from_margins,
    labels_from_scores,
    patch_attention_maps,
    plan_pairs,
)

from .workloads import autocast_context, clip_forward_fn, synthetic_batch


def measure_breakdown(args, bench, model, optimizer, batch, use_rfm) -> dict:
    """Time the pieces of a training step separately: CLIP forward, then the stages of the model's own
    `generate_pseudo_labels` (`weclip_hf.pseudo_labels`) on the same inputs: GradCAM, affinity (maps + the
    attention mean or RFM + transition matrix), box masks + refinement + upsampling, PAR; the whole
    `generate_pseudo_labels`, decoder forward + losses + backward + AdamW; and a plain CLIP forward (all L
    blocks, SDPA) of the same batch as the yardstick. The pieces' runs are interleaved."""
    device, cfg = bench.device, model.config
    pixel_values, class_labels = synthetic_batch(
        batch, args.crop, args.crop, cfg.num_foreground_classes, device, args.seed
    )
    model.train()
    amp = lambda: autocast_context(args, device)  # noqa: E731

    def clip_forward():
        with amp():
            return model.forward_clip_features(pixel_values, attention_maps_needed(cfg, use_rfm))

    clip = clip_forward()
    hidden, grid = clip.hidden, clip.grid
    tokens = [t[:, 1:] for t in hidden[len(hidden) - cfg.num_feature_layers :]]

    def decoder_forward():
        with amp():
            logits, features = model.decoder(tokens, grid)
        flat = features.flatten(2).float()
        return logits, torch.sigmoid(flat.transpose(1, 2) @ flat)

    decoder_affinity = decoder_forward()[1].detach()

    def pseudo_labels():  # float32 under any autocast, as in the model's forward
        return model.generate_pseudo_labels(pixel_values, class_labels, clip, decoder_affinity, use_rfm)

    details = pseudo_labels()
    pseudo = details.pseudo_labels
    # the stages, in the order of generate_pseudo_labels (the pair plan, class scores, labels and dense CAMs are
    # the "other" share); each timed on the model's own intermediates and checked to reproduce the next one
    # (from the same inputs, not a chain of recomputations: with random weights the RFM's layer choice and the
    # uint8 box threshold sit at near-ties that last-bit differences of a recomputation could flip)
    plan = plan_pairs(class_labels, device)

    def gradcam_piece():  # the model's own call of `pair_gradcams` (chunked on a CPU)
        return model.pair_gradcams(hidden[-1], plan, grid)

    gradcams = gradcam_piece()

    def affinity_piece():
        maps = patch_attention_maps(clip.attention, gradcams.last_attention)
        affinity = cam_affinity(maps, cfg, use_rfm, decoder_affinity).affinity
        return affinity, transition_matrix(affinity)

    affinity, _ = affinity_piece()
    transition = transition_matrix(details.affinity_before_norm)

    def box_refine_piece():
        masks = cam_box_masks(details.gradcams, cfg.cam_box_threshold)
        refined_grid = refine_cams(details.gradcams, transition, plan.image, masks)
        return masks, refined_grid, upsample_normalized(refined_grid, pixel_values.shape[-2:])

    masks, refined_grid, _ = box_refine_piece()
    scores = class_scores(details.refined_cams, plan, cfg.cam_bg_exponent)
    margins = background_margins(scores, plan)
    setting = (cfg.par_dilations, cfg.par_num_iter, cfg.par_temperature, cfg.par_pos_weight)
    in_use = plan.present.sum(1)

    def par_piece():  # as the model: PAR on the classes' margins over the background, the maps in use only
        return par_refine(pixel_values, margins, *setting, num_maps=in_use)

    def par_on_scores():  # the official form, for comparison: PAR on the [background, classes] scores
        return par_refine(pixel_values, scores, *setting, num_maps=1 + in_use)

    check = dict(rtol=1e-5, atol=1e-6, msg=lambda m: f"a timed stage differs from the model: {m}")
    torch.testing.assert_close(gradcams.cams, details.gradcams, **check)
    torch.testing.assert_close(affinity, details.affinity_before_norm, **check)
    torch.testing.assert_close(masks, details.box_masks, rtol=0, atol=0)
    torch.testing.assert_close(refined_grid, details.refined_cams_grid, **check)
    torch.testing.assert_close(labels_from_margins(par_piece(), plan), pseudo, rtol=0, atol=0)

    def decoder_train():
        optimizer.zero_grad(set_to_none=True)
        logits, affinity = decoder_forward()
        seg = segmentation_loss(logits, pseudo, cfg.semantic_loss_ignore_index)
        targets = affinity_targets(pseudo, grid, cfg.affinity_radius, cfg.semantic_loss_ignore_index)
        loss = seg + cfg.affinity_loss_weight * affinity_loss(affinity, targets)[0]
        loss.backward()
        optimizer.step()

    pieces = dict(
        plain_clip_forward=clip_forward_fn(args, model, pixel_values),
        clip_forward=clip_forward,
        gradcam=gradcam_piece,
        affinity=affinity_piece,
        box_masks_refine=box_refine_piece,
        par=par_piece,
        par_on_scores=par_on_scores,
        generate_pseudo_labels=pseudo_labels,
        decoder_train=decoder_train,
    )
    seconds = bench.paired_medians(pieces, args.warmup, args.breakdown_repeats)
    parts = ("gradcam", "affinity", "box_masks_refine", "par")
    seconds["pseudo_label_other"] = max(
        seconds["generate_pseudo_labels"] - sum(seconds[p] for p in parts), 0.0
    )
    seconds["sum"] = seconds["clip_forward"] + seconds["generate_pseudo_labels"] + seconds["decoder_train"]
    # the labels of PAR on the margins against the official form's (equal but at near-ties of the two best scores)
    same = labels_from_margins(par_piece(), plan) == labels_from_scores(par_on_scores(), plan)
    return dict(
        batch=batch,
        crop=args.crop,
        rfm=use_rfm,
        seconds=seconds,
        pairs=plan.num_pairs,
        par_labels_equal=float(same.float().mean()),
    )
