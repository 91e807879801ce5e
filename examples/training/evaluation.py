"""The evaluations of examples/train.py: every ``--eval_steps`` steps during the training (printed, tracked, logged)
and the final one (metrics.json's figures, the toy world's baselines, the overlays).
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from training.loop import append_log
from weclip_hf.data.batches import collate_by_size, process_subset
from weclip_hf.data.toy import toy_baselines
from weclip_hf.evaluation import MIOU_NAMES, evaluate_segmentation, write_overlays
from weclip_hf.metrics import per_class_iou


def toy_baselines_of(val_set, num_labels: int) -> dict[str, float]:
    """``toy_baselines`` of the validation set, as metrics.json's ``baseline_{bg,whole,disk}_miou``."""
    items = [val_set[i] for i in range(len(val_set))]
    masks = torch.stack([item["labels"] for item in items]).numpy()
    # the lowest present class id (class_labels index + 1), 0 for an image without one
    present = torch.stack([item["class_labels"] for item in items]) > 0
    first = torch.where(present.any(dim=1), present.int().argmax(dim=1) + 1, 0).numpy()
    scores = toy_baselines(masks, first, num_labels)
    short = {"all_background": "bg", "whole_image_first_class": "whole", "centred_disk_first_class": "disk"}
    return {f"baseline_{short[name]}_miou": value for name, value in scores.items()}


def miou_names(args) -> dict[str, str]:
    """Each evaluation mode's figure name in metrics.json, the log and the trackers (`MIOU_NAMES`); with
    ``--fully_supervised`` the decoder's figures are named apart from a weakly supervised model's."""
    names = dict(MIOU_NAMES)
    if args.fully_supervised:
        names.update(pred="fully_supervised_miou", pred_msf="fully_supervised_miou_msf")
    return names


def evaluate_in_training(
    args, accelerator: Accelerator, model, val_set, step: int, log_path: Path, input_size: dict | None
) -> None:
    """``--eval_steps``: decoder and pseudo-label mIoU on the validation set (the images resized to ``input_size``,
    as the saved processor resizes them), every process evaluating every num_processes-th image (the confusion
    matrices are summed); printed, tracked and logged."""
    shard = process_subset(val_set, accelerator.process_index, accelerator.num_processes)
    loader = DataLoader(shard, batch_size=args.per_device_eval_batch_size, collate_fn=collate_by_size)
    res = evaluate_segmentation(
        model,
        loader,
        ("pred", "pseudo"),
        input_size=input_size,
        accelerator=accelerator,
        progress=False,
    )
    names = miou_names(args)
    scores = {f"eval_{names[mode]}": result["mean_iou"] for mode, result in res.items()}
    accelerator.print(f"step {step}: {scores}")
    accelerator.log(scores, step=step)
    if accelerator.is_main_process:
        append_log(log_path, {"step": step, **scores})


def final_evaluation(
    args, accelerator: Accelerator, model, val_set, output_dir: Path, input_size: dict | None
) -> dict:
    """The trained model on the validation set (the images resized to ``input_size``, as the saved processor
    resizes them): decoder, CAM and RFM pseudo-label mIoU, the multi-scale decoder unless ``--no_msf``, per-class
    IoU, the toy world's baselines, and the overlays written to ``output_dir`` (main process). Every process scores
    every num_processes-th image and the confusion matrices are summed (as in `evaluate_in_training`): the figures
    of one process, and no process waits at a barrier through the others' evaluation."""
    cfg = model.config
    shard = process_subset(val_set, accelerator.process_index, accelerator.num_processes)
    loader = DataLoader(shard, batch_size=args.per_device_eval_batch_size, collate_fn=collate_by_size)
    modes = ["pred", "cam", "pseudo"] + ([] if args.no_msf else ["pred_msf"])
    res = evaluate_segmentation(
        model,
        loader,
        modes,
        scales=args.msf_scales,
        input_size=input_size,
        accelerator=accelerator,
        progress=accelerator.is_local_main_process,
    )
    names = miou_names(args)
    metrics = {names[mode]: result["mean_iou"] for mode, result in res.items()}
    if "pred_msf" in res:
        metrics["msf_scales"] = list(args.msf_scales)
    # null: class absent from predictions and ground truth
    metrics["per_class_iou"] = per_class_iou(res["pred"]["per_category_iou"], cfg.id2label)
    if args.recipe == "toy":
        metrics.update(toy_baselines_of(val_set, cfg.num_labels))
    if accelerator.is_main_process:
        metrics["overlays"] = write_overlays(model, val_set, output_dir, args.num_overlays)
    return metrics
