#!/usr/bin/env python
"""Train WeCLIP with transformers' `Trainer`: the recipe of examples/train.py (crops, pseudo labels, optimizer,
schedule) in Trainer's loop, for code built around Trainer (callbacks, its checkpoints, its trackers).

    python examples/train_with_trainer.py                   # the offline toy world
    python examples/train_with_trainer.py --preset voc --dataset_name jxie/pascal-voc-2012 --output_dir weclip-voc

`WeCLIPTrainer` (`weclip_hf.trainer`) is `Trainer` with WeCLIP's collator (the masks of a training set never reach
the model unless it is to be fully supervised), the official optimizer and warm-up + linear schedule built from the
`TrainingArguments`, and an evaluation that scores segmentations (mIoU of the decoder, the CAM and the RFM pseudo
labels), so that `eval_strategy`, callbacks and `load_best_model_at_end` work. The training set comes from
`weclip_hf.data.loading.training_set` (image-level labels from a label column or the masks, random crops), the
validation set from `evaluation_set`; no gradient clipping (``max_grad_norm=0``), as the official code.
`--resume_from_checkpoint` continues a run exactly (Trainer restores the RNG and the data position; the model's step
counter, which starts the RFM, is a saved buffer). examples/train.py is the complete script (streaming, several
processes on a CPU, signals, multi-scale evaluation, overlays, a model card, the Hub).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainingArguments, set_seed

from weclip_hf import WeCLIPImageProcessor
from weclip_hf.checkpointing import claim_output_dir, remove_previous_run
from weclip_hf.data.loading import DataSource, evaluation_set, load_dataset_splits, training_set
from weclip_hf.data.toy import default_clip_model
from weclip_hf.data.transforms import TrainAugmentation
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.modeling_weclip_plus import model_from_backbones
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import PRESETS, get_preset, processor_size
from weclip_hf.script_arguments import (
    add_data_source_flags,
    at_least_one,
    check_dino_fits_preset,
    check_preset_fits_data,
    first_paragraph,
    recipe_values,
)
from weclip_hf.trainer import WeCLIPTrainer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    add_data_source_flags(p, dataset_name="Hub dataset id (default: the offline toy world)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the recipe and classes (default: toy without a dataset, else voc)",
    )
    p.add_argument(
        "--clip_model_name_or_path", help="default: the toy CLIP for the toy world, else CLIP ViT-B/16"
    )
    p.add_argument(
        "--dino_model_name_or_path",
        help="WeCLIP+ on this DINOv2 (default for a WeCLIP+ preset: facebook/dinov2-small)",
    )
    p.add_argument(
        "--output_dir",
        default="outputs/weclip-toy-trainer",
        help="where the model, its processor and the checkpoints go (default: outputs/weclip-toy-trainer)",
    )
    p.add_argument(
        "--max_train_steps",
        type=at_least_one,
        help=f"default: the preset's ({recipe_values('max_train_steps')})",
    )
    p.add_argument("--resume_from_checkpoint", help="a checkpoint-N folder of --output_dir, or 'latest'")
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in an --output_dir that holds a previous run (its checkpoints and metrics are removed)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the decoder's weights, the crops and the toy world (0)"
    )
    args = p.parse_args(argv)
    check_dino_fits_preset(p, args)
    check_preset_fits_data(p, args)
    return args


def main(argv=None) -> dict:
    """Train as the command line ``argv`` says, save the model and its processor, return the validation mIoU."""
    args = parse_args(argv)
    # "latest": Trainer's True, its last checkpoint in --output_dir
    resume = True if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    is_main = PartialState().is_main_process
    previous_run = claim_output_dir(
        Path(args.output_dir), bool(resume), args.overwrite_output_dir, "checkpoint-*"
    )
    source = DataSource.from_args(args)
    preset = get_preset(args.preset or ("toy" if source.toy else "voc"))
    recipe = preset.training
    if args.max_train_steps:
        recipe = dataclasses.replace(recipe, max_train_steps=args.max_train_steps)
    set_seed(args.seed)  # the decoder's initial weights
    train_raw, val_raw, names = load_dataset_splits(source, preset=args.preset)
    clip = args.clip_model_name_or_path or default_clip_model(toy=preset.name == "toy")  # the preset's CLIP
    plus = preset.model_type == "weclip_plus"
    config_kwargs = {**preset.config_kwargs(), **{k: v for k, v in names.items() if v is not None}}
    model = model_from_backbones(clip, args.dino_model_name_or_path, plus, **config_kwargs)
    cfg = model.config
    size = processor_size(preset.evaluation.eval_long_side, recipe.crop_size)
    processor = WeCLIPImageProcessor(size=size, **processor_settings(cfg))
    normalization = PixelNormalization.from_image_processor(processor)
    # images of different sizes (VOC's) are batched by size (`collate_by_size`), so evaluation batches as training
    eval_batch_size = recipe.per_device_train_batch_size
    training_args = TrainingArguments(
        args.output_dir,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.num_warmup_steps,
        max_steps=recipe.max_train_steps,
        max_grad_norm=0.0,  # the official recipe clips no gradient
        dataloader_drop_last=True,  # whole batches, as examples/train.py
        dataloader_pin_memory=torch.cuda.is_available(),
        eval_strategy="steps" if recipe.eval_steps and val_raw is not None else "no",
        eval_steps=recipe.eval_steps or None,
        logging_steps=50,
        save_steps=recipe.checkpointing_steps or recipe.max_train_steps,
        seed=args.seed,
        report_to="none",
    )
    augment = TrainAugmentation(
        recipe.crop_size, (recipe.scale_min, recipe.scale_max), normalization=normalization
    )
    train_set, summary = training_set(
        train_raw,
        cfg.num_foreground_classes,
        augment,
        class_names=list(zip(cfg.label_names, cfg.class_names)),
        seed=args.seed,  # the crops and flips, as examples/train.py's
        labelling=training_args.main_process_first,  # one process reads the images for the labels
    )
    print(f"train: {summary}")

    val_set = None
    if val_raw is not None:
        val_set, _ = evaluation_set(
            val_raw,
            cfg.num_foreground_classes,
            cfg.semantic_loss_ignore_index,
            normalization,
            labelling=training_args.main_process_first,
            class_names=list(zip(cfg.label_names, cfg.class_names)),  # a label column of names, as training's
        )
    trainer = WeCLIPTrainer(
        model,
        training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=processor,  # saved with the model and in every checkpoint
        eval_modes=("pred", "cam", "pseudo"),
        eval_long_side=preset.evaluation.eval_long_side,
    )
    if previous_run and is_main:  # --overwrite_output_dir, now that the data and model are loaded
        remove_previous_run(previous_run)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    results = {}
    if val_set is not None:
        results = trainer.evaluate()  # the model as saved (with load_best_model_at_end, the best one)
        results["train_seconds"] = next(
            h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h
        )
    trainer.create_model_card(dataset=args.dataset_name)  # README.md, with these figures
    if results and trainer.is_world_process_zero():
        Path(args.output_dir, "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
