"""Pseudo-label diagnostics on the toy world's dev draws: the CAM settings, and what the RFM affinity adds.

    python examples/diagnose_toy_cams.py                              # CAM (no RFM): box threshold x maps
    python examples/diagnose_toy_cams.py --model outputs/weclip-toy  # a trained model's RFM, piece by piece

Pseudo labels are scored (9-class mIoU, background included) on images of the dev seeds 5,000,000 and
6,000,000, never on a training run's validation draw. Without ``--model`` the model is the toy recipe's
(`examples/train.py`, shipped tiny CLIP) with ``cam_box_threshold`` (``--box_thresholds``) and
``attention_num_maps`` (``--attention_num_maps``) swept.

With ``--model`` every row refines the same GradCAMs with another affinity:
- ``cam``: the mean of the last ``attention_num_maps`` attention maps (no RFM);
- ``rfm``: the RFM as specified: the maps its layer rule keeps, times the decoder affinity A_dec;
- ``rfm kept maps only``: the kept maps without A_dec (the rule does not depend on A_dec, whose sum is
  the same for every layer);
- ``rfm with the true A_dec``: A_dec replaced by the ground truth's same-label indicator on the patch grid
  (an oracle: what a perfect decoder affinity would give);
and how often the rule keeps each attention map.
"""

from __future__ import annotations

import argparse
import pathlib

import torch
from training.arguments import parse_args as train_args
from training.data_and_model import build_model
from transformers import AutoModelForSemanticSegmentation

from weclip_hf import WeCLIPForSemanticSegmentation
from weclip_hf.data.toy import TOY_BACKGROUND_NAMES, TOY_CLASS_NAMES, TOY_PROMPT_TEMPLATE, generate_toy_world
from weclip_hf.data.transforms import multi_hot, normalize
from weclip_hf.metrics import confusion_matrix, scores_from_confusion
from weclip_hf.normalization import IMAGENET_NORMALIZATION
from weclip_hf.pseudo_labels import attention_maps_needed
from weclip_hf.script_arguments import at_least_one

DEV_SEEDS = (5_000_000, 6_000_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=pathlib.Path, help="a trained toy model (RFM diagnostics)")
    parser.add_argument(
        "--num_images", type=at_least_one, default=300, help="images per dev seed (default: 300)"
    )
    parser.add_argument(
        "--box_thresholds",
        type=float,
        nargs="+",
        default=[0.3, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="cam_box_threshold values swept without --model (default: 0.3 0.5 0.6 0.7 0.8 0.9)",
    )
    parser.add_argument(
        "--attention_num_maps",
        "--attention_layers",  # its former name
        type=int,
        nargs="+",
        default=[2, 3],
        help="attention_num_maps values swept without --model (default: 2 3)",
    )
    parser.add_argument(
        "--batch_size", type=at_least_one, default=25, help="images per forward (default: 25)"
    )
    parser.add_argument("--num_threads", type=at_least_one, default=2, help="torch threads (default: 2)")
    return parser.parse_args(argv)


def recipe_model() -> WeCLIPForSemanticSegmentation:
    """The model `examples/train.py` builds with no arguments (toy recipe, shipped CLIP)."""
    names = dict(
        class_names=TOY_CLASS_NAMES,
        background_names=TOY_BACKGROUND_NAMES,
        prompt_template=TOY_PROMPT_TEMPLATE,
    )
    return build_model(train_args([]), names)


def dev_batches(num_images: int, batch_size: int) -> list[list[tuple[torch.Tensor, ...]]]:
    """Per dev seed: batches of (pixel values, masks, multi-hot labels), normalized as the model expects."""
    draws = []
    for seed in DEV_SEEDS:
        world = generate_toy_world(num_images, seed=seed)
        pixels = torch.stack([normalize(image, IMAGENET_NORMALIZATION) for image in world["images"]])
        masks = torch.from_numpy(world["masks"]).long()
        labels = torch.stack([multi_hot(present, len(TOY_CLASS_NAMES)) for present in world["labels"]])
        draws.append(
            [
                (pixels[s : s + batch_size], masks[s : s + batch_size], labels[s : s + batch_size])
                for s in range(0, num_images, batch_size)
            ]
        )
    return draws


def same_label(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, N, N] 1 where two patches' centre pixels share a ground-truth label, else 0."""
    centres = masks[:, patch // 2 :: patch, patch // 2 :: patch].flatten(1)
    return (centres[:, :, None] == centres[:, None, :]).float()


@torch.no_grad()
def pseudo_labels(model, pixels, labels, masks, variant: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pseudo labels [B, H, W], RFM keep [B, L] or None) with one of the affinities of the docstring."""
    if variant in ("cam", "rfm"):
        out = model(
            pixel_values=pixels, class_labels=labels, use_rfm=variant == "rfm", output_cam_details=True
        )
        return out.pseudo_labels, out.cam_details.rfm_keep
    cfg = model.config
    clip = model.forward_clip_features(pixels, attention_maps_needed(cfg, use_rfm=True))
    grid = clip.grid
    if variant == "rfm kept maps only":
        affinity = torch.ones(len(pixels), grid[0] * grid[1], grid[0] * grid[1])
    else:
        affinity = same_label(masks, cfg.vision_config.patch_size)
    out = model.generate_pseudo_labels(pixels, labels, clip, affinity, use_rfm=True)
    return out.pseudo_labels, out.rfm_keep


def score(model, draws, variant: str) -> tuple[list[float], torch.Tensor | None]:
    """mIoU per dev seed, and the mean RFM keep rate per map (RFM variants)."""
    mious, keeps = [], []
    num_labels = model.config.num_labels
    for batches in draws:
        confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
        for pixels, masks, labels in batches:
            predicted, keep = pseudo_labels(model, pixels, labels, masks, variant)
            confusion += confusion_matrix(predicted, masks, num_labels)
            if keep is not None:
                keeps.append(keep.float())
        mious.append(scores_from_confusion(confusion)["mean_iou"])
    return mious, (torch.cat(keeps).mean(dim=0) if keeps else None)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    draws = dev_batches(args.num_images, args.batch_size)
    rows = []
    if args.model is None:
        model = recipe_model().eval()
        for layers in args.attention_num_maps:
            for threshold in args.box_thresholds:
                model.config.attention_num_maps, model.config.cam_box_threshold = layers, threshold
                mious, _ = score(model, draws, "cam")
                rows.append(dict(attention_num_maps=layers, cam_box_threshold=threshold, mious=mious))
    else:
        model = AutoModelForSemanticSegmentation.from_pretrained(args.model).eval()
        for variant in ("cam", "rfm", "rfm kept maps only", "rfm with the true A_dec"):
            mious, keep = score(model, draws, variant)
            rows.append(dict(variant=variant, mious=mious, keep=None if keep is None else keep.tolist()))
    for row in rows:
        mious = row.pop("mious")
        keep = row.pop("keep", None)
        setting = ", ".join(f"{k} {v}" for k, v in row.items())
        line = f"{setting:<50} dev mIoU {' / '.join(f'{m:.3f}' for m in mious)}, mean {sum(mious) / len(mious):.3f}"
        if keep is not None:
            line += "; kept maps (oldest first): " + " ".join(f"{k:.2f}" for k in keep)
        print(line)
        row.update(mious=mious, keep=keep)
    return rows


if __name__ == "__main__":
    main()
