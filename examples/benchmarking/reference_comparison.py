"""Our batched pseudo labels against the slow per-image/per-class reference (`tests/reference_weclip.py`): both
timed on the same inputs, and how far their labels and intermediates agree."""

from __future__ import annotations

import numpy as np
import torch
from reference_weclip import reference_pseudo_labels  # tests/, on sys.path (`__init__.py`)

from weclip_hf.pseudo_labels import attention_maps_needed

from .instruments import Bench
from .workloads import autocast_context, synthetic_batch


def measure_reference(args, bench, model, use_rfm) -> dict:
    """Pseudo labels (CLIP forward + CAMs + refinement + PAR): our batched path vs the per-image/per-class
    reference, timed on the same inputs, and the fraction of pixels where they agree."""
    device, cfg = bench.device, model.config
    batch = args.reference_batch
    pixel_values, class_labels = synthetic_batch(
        batch, args.crop, args.crop, cfg.num_foreground_classes, device, args.seed + 1
    )
    model.eval()
    with torch.no_grad():
        clip = model.forward_clip_features(pixel_values, 0)
        hidden, grid = clip.hidden, clip.grid
        tokens = [t[:, 1:] for t in hidden[len(hidden) - cfg.num_feature_layers :]]
        features = model.decoder(tokens, grid)[1].flatten(2).float()
        decoder_affinity = torch.sigmoid(features.transpose(1, 2) @ features)

    last: dict = {}

    def ours():  # the CLIP forward under --autocast; the pseudo labels in float32, as in the model's forward
        with autocast_context(args, device):
            clip = model.forward_clip_features(pixel_values, attention_maps_needed(cfg, use_rfm))
        last["ours"] = model.generate_pseudo_labels(
            pixel_values, class_labels, clip, decoder_affinity, use_rfm
        )

    # The reference mixes NumPy into the loop: it runs on the CPU (a CPU copy of the model on CUDA).
    ref_bench = Bench(torch.device("cpu"))
    ref_model = model if device.type == "cpu" else _cpu_copy(model)
    ref_inputs = (pixel_values.cpu(), class_labels.cpu(), decoder_affinity.cpu())

    def reference():
        last["ref"] = reference_pseudo_labels(ref_model, ref_inputs[0], ref_inputs[1], use_rfm, ref_inputs[2])

    ours_s = bench.median(ours, args.warmup, max(args.repeats, 1))
    ref_s = ref_bench.median(reference, args.reference_warmup, max(args.reference_repeats, 1))
    return dict(
        batch=batch,
        crop=args.crop,
        rfm=use_rfm,
        ours_seconds=ours_s,
        reference_seconds=ref_s,
        speedup=ref_s / ours_s,
        reference_device="cpu",
        **compare(last["ours"], last["ref"]),
    )


def compare(ours, ref: dict) -> dict:
    """Agreement of our pseudo labels and intermediates with the reference's.

    With random CLIP weights the attention is nearly uniform, so the refined CAMs are nearly flat
    (``refined_spread`` = (max - min) / max of the refined grid, ~1e-5): their min-max normalization
    amplifies float32 summation-order differences (~1e-7) by ~1e5 and moves labels; for the same
    reason the RFM's layer choice (float32 sums of near-equal masses) can flip. The intermediates
    before that normalization are the sharper check."""
    differ = ours.pseudo_labels.cpu() != ref["pseudo_labels"]
    refined = torch.from_numpy(np.stack(ref["refined_grid"]))
    gradcams = torch.from_numpy(np.stack(ref["gradcams"]))
    boxes = torch.from_numpy(np.stack(ref["box_masks"]))
    ours_refined = ours.refined_cams_grid.float().cpu()
    spread = (refined.amax((-2, -1)) - refined.amin((-2, -1))) / refined.abs().amax((-2, -1)).clamp(min=1e-30)
    return dict(
        equal_pixels=1.0 - differ.float().mean().item(),
        # differing pixels at near-ties of the reference's PAR scores (top-2 gap < 1e-3)?
        differ_at_near_ties=bool((ref["top2_gaps"][differ] < 1e-3).all()),
        gradcam_max_abs_diff=(ours.gradcams.float().cpu() - gradcams).abs().max().item(),
        box_masks_equal=(ours.box_masks.cpu() == boxes).float().mean().item(),
        refined_max_rel_diff=(
            (ours_refined - refined).abs().max() / refined.abs().max().clamp(min=1e-30)
        ).item(),
        refined_spread_median=spread.median().item(),
        # the official RFM rule can keep no layer (nearly equal d, e.g. a saturated decoder affinity): NaN CAMs in
        # the reference; ours keeps the smallest d (`affinity.rfm_keep_rule`)
        reference_refined_finite=bool(torch.isfinite(refined).all()),
        ours_refined_finite=bool(torch.isfinite(ours_refined).all()),
    )


def _cpu_copy(model):
    import copy

    return copy.deepcopy(model).cpu().float()
