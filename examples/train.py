#!/usr/bin/env python
"""Train WeCLIP with Accelerate: image-level labels -> frozen-CLIP pseudo labels -> segmentation decoder.

    accelerate launch examples/train.py                     # the offline toy world (default)
    accelerate launch examples/train.py --preset voc --dataset_name jxie/pascal-voc-2012 \\
        --output_dir weclip-voc                             # the official VOC recipe (DESIGN Part 1)

With --streaming the training split is read as a stream (shuffle buffer, no random access); resuming
such a run replays the interrupted pass from its start and skips the batches already trained on.

Phases: arguments -> data -> model -> optimizer/schedule -> loop (checkpoints, evaluation) -> final
evaluation, save, (push). Flags follow transformers' run_semantic_segmentation_no_trainer.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from huggingface_hub import try_to_load_from_cache
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForSemanticSegmentation, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import cached_file

from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation, WeCLIPImageProcessor, WeCLIPPlusConfig
from weclip_hf.checkpointing import (
    Computation,
    FrozenWeights,
    StreamPosition,
    TrainingState,
    compile_mode_in_effect,
    find_checkpoint,
    holds_frozen_weights,
    load_checkpoint,
    prune_checkpoints,
)
from weclip_hf.data.columns import is_streaming
from weclip_hf.data.loading import (
    DATASET_NAME_FIELDS,
    DataSource,
    EpochShuffleSampler,
    LabelReading,
    StreamingWeakSegmentationDataset,
    collate_by_size,
    dataset_classes_note,
    evaluation_set,
    holds_pseudo_masks,
    load_dataset_splits,
    names_no_dataset,
    process_subset,
    training_set,
)
from weclip_hf.data.toy import default_clip_model, toy_baselines
from weclip_hf.data.transforms import TrainAugmentation
from weclip_hf.evaluation import MIOU_NAMES, evaluate_segmentation, processor_input_size, write_overlays
from weclip_hf.host_memory import retain_freed_host_memory
from weclip_hf.hub import (
    TOKENIZER_FILES,
    card_repo_id,
    create_hub_repo,
    make_model_card,
    publish_folder,
    save_model_card,
    split_model_metrics,
)
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.local_cores import cores_per_local_process
from weclip_hf.losses import LOSS_TERMS, present_losses
from weclip_hf.metrics import per_class_iou
from weclip_hf.model_loading import public_source_name
from weclip_hf.modeling_weclip import WeCLIPSemanticSegmenterOutput
from weclip_hf.modeling_weclip_plus import model_from_backbones
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import (
    PRESETS,
    VOC_PRESET_OF_MODEL_TYPE,
    TrainingRecipe,
    get_preset,
    preset_config_kwargs,
    processor_size,
    with_class_names,
)
from weclip_hf.run_folder import (
    OVERWRITE_AND_RESUME,
    claim_output_dir,
    logged_evaluation,
    output_dir_held,
    remove_previous_run,
    resumes_in_place,
    truncate_log,
)
from weclip_hf.run_signals import exit_status, explain_signals, stop_on_signals
from weclip_hf.script_arguments import (
    CLASS_NAMES_HELP,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    TRAIN_VAL_SPLIT_HELP,
    add_data_source_flags,
    add_toy_size_flags,
    at_least_one,
    check_hub_token,
    check_preset_fits_data,
    check_preset_fits_model,
    check_source_flags,
    clip_tokenizer,
    config_values,
    first_paragraph,
    fraction,
    model_type_of_args,
    naming_the_model_flag,
    non_negative,
    positive_float,
    recipe_name,
    recipe_values,
    saved_config,
    saved_training_preset,
)
from weclip_hf.training import (
    WeCLIPDataCollator,
    check_fills_a_batch,
    create_optimizer_and_scheduler,
    global_batch,
    schedule_notes,
)
from weclip_hf.trajectory import (
    CONFIG_FLAGS,
    LAUNCH_FACTS,
    PATH_ARGS,
    PLUS_MODEL_FLAGS,
    WEIGHT_FLAGS,
    check_resolved,
    check_resume,
    public_args,
    recorded_clip,
    resolved_trajectory,
    save_training_checkpoint,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    data = p.add_argument_group("data")
    add_data_source_flags(data, dataset_name="Hub dataset id (default: the offline toy world)")
    data.add_argument("--dataset_config_name", help=DATASET_CONFIG_HELP)
    data.add_argument(
        "--train_split",
        help="the split to train on (default: 'train_aug' where the dataset has it and --preset is voc, "
        "voc-plus or not given, else 'train')",
    )
    data.add_argument(
        "--validation_split",
        help="the split scored during and after training (default: the preset's, 'validation', when the dataset "
        "has it; 'none': no evaluation)",
    )
    data.add_argument("--train_val_split", type=fraction, help=TRAIN_VAL_SPLIT_HELP)
    data.add_argument("--image_column", help=IMAGE_COLUMN_HELP)
    data.add_argument("--mask_column", help=MASK_COLUMN_HELP)
    data.add_argument("--labels_column", help=LABELS_COLUMN_HELP)
    data.add_argument("--labels_zero_based", action="store_true", help="image-level ids are 0..C-1")
    data.add_argument(
        "--skip_empty_images",
        action=argparse.BooleanOptionalAction,
        help="leave out the images without any class, in training and evaluation, as COCO's official lists "
        f"do (default: the preset's, {recipe_values('skip_empty_images')}; --no-skip_empty_images keeps them)",
    )
    data.add_argument(
        "--streaming",
        action="store_true",
        help="stream the training split (Hub, imagefolder or saved dataset); the validation split "
        "is read once into memory. Resume replays the interrupted pass, skipping what was seen",
    )
    data.add_argument(
        "--shuffle_buffer_size",
        type=int,
        default=1000,
        help="streaming: examples in the shuffle buffer (1000)",
    )
    data.add_argument("--max_train_samples", type=at_least_one, help="train on the first N examples (N >= 1)")
    data.add_argument(
        "--skip_unreadable_images",
        action="store_true",
        help="skip images and masks that cannot be read, listing them (default: the first one is an error "
        "naming its file, before training for map-style data, when met for --streaming)",
    )
    data.add_argument(
        "--max_eval_samples",
        type=at_least_one,
        help="score the first N validation images (default: all); those without any class among them are then left "
        "out where empty images are skipped (--skip_empty_images, the coco presets)",
    )
    add_toy_size_flags(data)
    model = p.add_argument_group(
        "model",
        "config values; a flag left out takes the --preset's value (the toy preset's without a dataset), else "
        "WeCLIPConfig's; with --model_name_or_path, the saved config's",
    )
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="config values, training recipe and evaluation settings of weclip_hf.presets (RFM start: voc 9144, "
        "coco 40000); a --dataset_name without --preset trains with the recipe a --model_name_or_path was "
        "trained with (its config's training_preset), else the VOC recipe of the model type (voc, voc-plus for "
        "WeCLIP+: --dino_model_name_or_path or a WeCLIP+ --model_name_or_path) and config defaults; "
        "without a dataset the toy preset runs on the offline toy world",
    )
    model.add_argument(
        "--clip_model_name_or_path", help="default: openai/clip-vit-base-patch16 (toy: shipped)"
    )
    model.add_argument(
        "--dino_model_name_or_path",
        help="WeCLIP+: the frozen DINOv2 (default with --preset voc-plus / coco-plus: facebook/dinov2-small); "
        "given without a preset, trains WeCLIP+ with the preset's or the toy world's other settings",
    )
    model.add_argument("--model_name_or_path", help="continue from a saved WeCLIP or WeCLIP+ folder")
    model.add_argument(
        "--image_processor_name_or_path",
        help="a saved WeCLIPImageProcessor whose normalization (image_mean/image_std) the training and evaluation "
        "data use and that is saved with the model; default: that of --model_name_or_path, else WeCLIP's "
        "ImageNet statistics",
    )
    model.add_argument("--class_names", nargs="+", help=CLASS_NAMES_HELP)
    model.add_argument(
        "--background_names",
        nargs="+",
        help="background words, one CLIP prompt each (default: the preset's, else VOC's 25)",
    )
    model.add_argument(
        "--prompt_template",
        help=f"the CLIP prompt, {{}} standing for the class name ({config_values('prompt_template')})",
    )
    model.add_argument(
        "--rfm_start_step",
        type=int,
        help="the training steps after which the RFM acts (N: from step N+1 of the log on). Default: the preset's "
        "(voc 9144, where the official run's RFM really started; coco 40000), the toy recipe's 150, else the config "
        "default 15000 (the paper's; WeCLIP+'s 0) -- also for --dataset_name without --preset",
    )
    model.add_argument(
        "--cam_box_threshold",
        type=float,
        help=f"box threshold on the GradCAM ({config_values('cam_box_threshold')}; WeCLIP+: only with the "
        "box mask of coco-plus, rfm_use_box_mask)",
    )
    model.add_argument(
        "--attention_num_maps",
        type=int,
        help="last attention maps averaged for CAM refinement "
        f"({config_values('attention_num_maps', '8, WeCLIP+ 6; at most the CLIP depth')})",
    )
    model.add_argument(
        "--rfm_num_maps",
        type=int,
        help=f"last attention maps the RFM chooses from ({config_values('rfm_num_maps', '6')})",
    )
    model.add_argument(
        "--par_dilations",
        type=int,
        nargs="+",
        help=f"PAR neighbour dilations ({config_values('par_dilations')})",
    )
    model.add_argument(
        "--decoder_hidden_size", type=int, help=f"decoder width ({config_values('decoder_hidden_size')})"
    )
    model.add_argument("--decoder_dropout", type=float, help="Dropout2d after the feature fusion (0.1)")
    model.add_argument(
        "--semantic_loss_ignore_index",
        type=int,
        help="the label id of ignored mask pixels (255, VOC's void); no class id may equal it: -100 for more than "
        "254 classes. The masks' own ignored pixels must carry it",
    )
    plus = p.add_argument_group(
        "WeCLIP+ model",
        "WeCLIPPlusConfig fields (refused for a WeCLIP model); a flag left out takes the WeCLIP+ --preset's value, "
        "else the config's; with --model_name_or_path, the saved config's",
    )
    plus.add_argument(
        "--self_training_start_step",
        type=non_negative,
        help="the training steps after which confident prediction pixels overwrite the pseudo labels "
        f"({config_values('self_training_start_step', '18001')}; --max_train_steps or more: never)",
    )
    plus.add_argument(
        "--self_training_threshold",
        type=float,
        help="softmax confidence above which self-training overwrites a pixel (0.75)",
    )
    plus.add_argument(
        "--branch_logit_weights",
        type=float,
        nargs=2,
        metavar=("W_CLIP", "W_DINO"),
        help="the prediction's weights of the CLIP and DINOv2 branches' logits (0.5 0.5)",
    )
    plus.add_argument(
        "--rfm_use_box_mask",
        action=argparse.BooleanOptionalAction,
        help=f"RFM+ keeps each class's propagated CAM inside its box ({config_values('rfm_use_box_mask', 'False')}; "
        "--no-rfm_use_box_mask: off)",
    )
    plus.add_argument("--dice_loss_weight", type=float, help="weight of the Dice loss (1.0)")
    plus.add_argument(
        "--cross_branch_loss_weight", type=float, help="weight of each cross-branch CE term (0.1)"
    )
    model.add_argument("--fully_supervised", action="store_true", help="train on the ground-truth masks")
    model.add_argument("--ignore_padding", action="store_true", help="crop padding -> ignore (not official)")
    train = p.add_argument_group(
        "training",
        "a flag of the recipe left out takes the recipe's value: the toy recipe's without a dataset, else the "
        "--preset's (without one voc, voc-plus for a WeCLIP+ model)",
    )
    train.add_argument(
        "--output_dir",
        default="outputs/weclip-toy",
        help="where the model, metrics.json, checkpoints and overlays go (default: outputs/weclip-toy, also "
        "with a --preset or a dataset)",
    )
    train.add_argument(
        "--per_device_train_batch_size",
        type=at_least_one,
        help=f"training images per process and step; default: the recipe's "
        f"({recipe_values('per_device_train_batch_size')})",
    )
    train.add_argument(
        "--per_device_eval_batch_size",
        type=at_least_one,
        default=None,
        help="evaluation images per process (default: --per_device_train_batch_size on the toy world, else 1)",
    )
    train.add_argument(
        "--learning_rate",
        type=positive_float,
        help="decoder learning rate (voc: the official config's 2e-4 x its 10x group); default: the recipe's "
        f"({recipe_values('learning_rate')})",
    )
    train.add_argument(
        "--weight_decay",
        type=float,
        help=f"AdamW's; default: the recipe's ({recipe_values('weight_decay')})",
    )
    train.add_argument(
        "--num_warmup_steps",
        type=non_negative,
        help=f"linear learning-rate warm-up steps; default: the recipe's ({recipe_values('num_warmup_steps')})",
    )
    train.add_argument(
        "--max_train_steps",
        type=at_least_one,
        help=f"optimizer steps; default: the recipe's ({recipe_values('max_train_steps')})",
    )
    train.add_argument(
        "--crop_size",
        type=at_least_one,
        help=f"side of the square training crops; default: the recipe's ({recipe_values('crop_size')})",
    )
    train.add_argument(
        "--scale_min",
        type=positive_float,
        help=f"smallest random rescale of a training crop; default: the recipe's ({recipe_values('scale_min')})",
    )
    train.add_argument(
        "--scale_max",
        type=positive_float,
        help=f"largest random rescale (>= --scale_min); default: the recipe's ({recipe_values('scale_max')})",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the decoder's weights, the crops and the toy world (0)"
    )
    train.add_argument(
        "--num_workers",
        type=non_negative,
        help="DataLoader worker processes (decoding + augmentation). Default: on an accelerator up to 4 "
        "(the cores per local process permitting), on the CPU 0 (workers would take the training threads' "
        "cores). A map-style dataset gives the same batches with any value (augmentation is keyed on (seed, "
        "epoch, index)); a --streaming one splits its shards among the workers, so resume it with the same value",
    )
    train.add_argument(
        "--num_threads",
        type=at_least_one,
        help="CPU training: torch threads per process. Default: the cores available to this process "
        "divided by the local processes (`accelerate launch` alone would pin a CPU run to 1 thread). A resume may "
        "change it, its weights then equal to the uninterrupted run's up to float rounding (checkpoints record it: "
        "such a resume is warned)",
    )
    train.add_argument(
        "--ddp_timeout",
        type=at_least_one,
        default=1800,
        help="several processes: seconds one waits for the others at a collective before the run fails (the main "
        "process labelling a large dataset first, the slowest shard of an evaluation); 1800 as transformers' "
        "TrainingArguments.ddp_timeout (torch's NCCL default is 600)",
    )
    train.add_argument(
        "--release_host_memory",
        action="store_true",
        help="CPU training: keep glibc's default of handing freed memory back to the OS between steps (each "
        "step then maps its activations afresh: 1.48x a CLIP forward instead of 1.41x at batch 4 here, "
        "BENCHMARKS.md) instead of keeping it for the next step (`weclip_hf.host_memory`)",
    )
    train.add_argument(
        "--torch_compile",
        action="store_true",
        help="run the training forward through torch.compile (the CLIP forward, the decoder and the losses; the "
        "pseudo labels stay eager); evaluation and saving use the plain model. The first steps of each kind "
        "(RFM off / on) compile",
    )
    train.add_argument("--torch_compile_backend", default="inductor", help="torch.compile backend (inductor)")
    train.add_argument(
        "--torch_compile_mode",
        help="torch.compile mode. Default with inductor: reduce-overhead (CUDA graphs) on a GPU, where the "
        "small-batch step waits on kernel launches (1.9x at batch 4 on an H200, BENCHMARKS.md), default elsewhere "
        "(on a 2-core CPU no gain beyond the run-to-run spread)",
    )
    train.add_argument(
        "--checkpointing_steps",
        type=non_negative,
        help="save a step_N checkpoint every N steps and at the end (0: never); default: the recipe's "
        f"({recipe_values('checkpointing_steps')})",
    )
    train.add_argument(
        "--checkpoints_total_limit",
        type=at_least_one,
        help="keep the N newest step_N checkpoints, removing older ones as new ones are written (the one just "
        "written always stays; a resumed run may change it); default: keep all (a VOC/COCO checkpoint is ~70 MB: the frozen CLIP is left out)",
    )
    train.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start a fresh run (or resume another folder's checkpoint) in an --output_dir that holds a previous "
        "run's checkpoints or results, removing them",
    )
    train.add_argument("--resume_from_checkpoint", help="a step_N folder or 'latest'")
    train.add_argument(
        "--eval_steps",
        type=non_negative,
        help=f"evaluate every N steps (0: only at the end); default: the recipe's ({recipe_values('eval_steps')})",
    )
    train.add_argument(
        "--eval_long_side",
        type=at_least_one,
        help="the saved image processor resizes the long side to N, and the evaluation predicts on images so "
        f"resized; default: the recipe's ({recipe_values('eval_long_side')}: to --crop_size x --crop_size, the toy "
        "world's image size)",
    )
    train.add_argument("--no_msf", action="store_true", help="skip multi-scale + flip evaluation")
    train.add_argument(
        "--msf_scales",
        type=positive_float,
        nargs="+",
        help=f"multi-scale evaluation scales; default: the recipe's ({recipe_values('msf_scales')})",
    )
    train.add_argument(
        "--num_overlays",
        type=int,
        default=6,
        help="overlays of the first N validation images at the end (6; -1: all)",
    )
    train.add_argument(
        "--logging_steps", type=at_least_one, default=10, help="log the losses every N steps (10)"
    )
    train.add_argument(
        "--with_tracking",
        action="store_true",
        help="log losses and metrics to the trackers of --report_to (default: all, every one installed)",
    )
    train.add_argument(
        "--report_to",
        help="trackers to log losses and metrics to, as accelerate's log_with (e.g. tensorboard): naming one turns "
        "--with_tracking on; 'none': no tracking",
    )
    train.add_argument(
        "--push_to_hub",
        action="store_true",
        help="publish --output_dir (model, processor, model card) to --hub_model_id at the end",
    )
    train.add_argument("--hub_model_id", help="the Hub repository (default: the --output_dir folder name)")
    train.add_argument("--hub_token", help="Hub token (default: the logged-in one); never written to disk")
    args = p.parse_args(argv)
    check_hub_token(p, args.hub_token)
    if args.overwrite_output_dir and resumes_in_place(Path(args.output_dir), args.resume_from_checkpoint):
        p.error(OVERWRITE_AND_RESUME)
    backbones = [f for f in ("clip_model_name_or_path", "dino_model_name_or_path") if getattr(args, f)]
    if args.model_name_or_path and backbones:
        p.error(
            f"--{backbones[0]} builds a fresh model from a backbone, and --model_name_or_path continues a trained "
            "one (its backbones are in it): give one of them."
        )
    if args.train_val_split and args.validation_split == "none":
        p.error(
            "--train_val_split holds out a validation split, and --validation_split none asks for none: give one."
        )
    if args.with_tracking and args.report_to == "none":
        p.error("--with_tracking logs to trackers and --report_to none to none: give one of them.")
    # as transformers' --report_to: naming a tracker is asking for tracking
    args.with_tracking = args.with_tracking or args.report_to not in (None, "none")
    if args.with_tracking and args.report_to is None:
        args.report_to = "all"
    check_preset_fits_model(p, args)
    check_preset_fits_data(p, args)
    check_source_flags(p, args)
    if args.no_msf and args.msf_scales:
        p.error(
            "--msf_scales are the scales of the multi-scale evaluation, which --no_msf turns off: give one."
        )
    args.given_model_flags = [
        k for k in CONFIG_FLAGS if getattr(args, k) is not None
    ]  # before the recipe fills
    offline = args.dataset_name is None and args.data_dir is None and args.dataset_path is None
    try:
        args.recipe = recipe_name(args)  # WeCLIP+'s VOC recipe for a WeCLIP+ model without --preset
        plus_flags = [k for k in PLUS_MODEL_FLAGS if k in args.given_model_flags]
        if plus_flags and model_type_of_args(args) != "weclip_plus":
            p.error(
                f"--{plus_flags[0]} sets a WeCLIP+ config field, but this run trains WeCLIP: give "
                "--dino_model_name_or_path, a WeCLIP+ --preset (voc-plus, coco-plus) or a WeCLIP+ "
                f"--model_name_or_path, or leave out --{plus_flags[0]}."
            )
    except (OSError, ValueError) as err:
        p.error(str(err))
    args.rfm_start_source = rfm_start_source(args)
    preset = get_preset(args.recipe)
    defaults = preset.recipe()
    if preset.dataset.toy_sizes:
        defaults["toy_train_images"], defaults["toy_val_images"] = preset.dataset.toy_sizes
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.scale_min > args.scale_max:
        p.error(f"--scale_min {args.scale_min} is larger than --scale_max {args.scale_max}.")
    if args.per_device_eval_batch_size is None:
        args.per_device_eval_batch_size = args.per_device_train_batch_size if offline else 1
    if args.push_to_hub and not args.hub_model_id:
        args.hub_model_id = Path(args.output_dir).name
    return args


# the trackers' project (accelerate's init_trackers): TensorBoard writes its event files under <--output_dir>/weclip
TRACKER_PROJECT = "weclip"
# flags of train.py that examples/evaluate.py takes with the same meaning: the validation data (the toy world's
# only without a dataset) and how much of it is scored
EVALUATE_DATA_FLAGS = (
    "dataset_name", "data_dir", "dataset_path", "dataset_config_name", "validation_split", "image_column",
    "mask_column", "labels_column", "labels_zero_based", "max_eval_samples", "skip_unreadable_images",
    "skip_empty_images",
)  # fmt: skip
EVALUATE_TOY_FLAGS = ("toy_val_images", "seed")
# the losses of the training log: the total and every term
LOGGED_LOSSES = ("loss", *LOSS_TERMS)


def check_losses_finite(out, step: int, gather=None, stop_signal: int = 0) -> int:
    """Raise `FloatingPointError` naming the first non-finite loss term of ``out``; return the signal (Ctrl-C /
    SIGTERM) that this process (``stop_signal``) or another got, the largest number; 0 for none. One host read per
    step.

    ``gather``: `Accelerator.gather`: the finite flag and the signal travel in one gather, so that every process
    stops at the same step when one has a non-finite loss or got the signal (instead of the others waiting forever
    in the backward's all-reduce, or at the checkpoint's barrier while one trains on)."""
    terms = present_losses(out, LOSS_TERMS)
    if not terms:
        raise ValueError(
            f"The model returned none of the loss terms {list(LOSS_TERMS)}: nothing to train on."
        )
    finite = torch.stack([v.detach().float() for v in terms.values()]).isfinite().all().to(torch.int32)
    flags = torch.stack([finite, finite.new_tensor(int(stop_signal))]).reshape(1, 2)
    flags = (gather(flags) if gather else flags).reshape(-1, 2).cpu()
    if bool(flags[:, 0].all()):
        return int(flags[:, 1].max())
    bad = [(name, value) for name, value in terms.items() if not torch.isfinite(value)]
    where = f"{LOSS_TERMS[bad[0][0]]} loss ({bad[0][1].item()})" if bad else "loss in another process"
    raise FloatingPointError(
        f"Non-finite {where} at step {step}; weights were not updated. "
        "Resume from the last checkpoint with a lower --learning_rate or check the data."
    )


# arguments of this machine's run, not of the model: left off its card (values derived from the flags, paths)
NOT_ON_CARD = frozenset(
    {
        "given_model_flags", "rfm_start_source", "resolved",
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
    }
)  # fmt: skip


def recipe_source(args: argparse.Namespace) -> str:
    """Why the run follows its recipe (printed with the configuration)."""
    if args.preset:
        return f"--preset {args.preset}"
    if args.recipe == "toy" and names_no_dataset(args):
        return "no dataset: the toy world's"
    if args.model_name_or_path and args.recipe == saved_training_preset(args):
        return "no --preset: the one --model_name_or_path records (its config's training_preset)"
    model = "WeCLIP+" if args.recipe == VOC_PRESET_OF_MODEL_TYPE["weclip_plus"] else "WeCLIP"
    # a continued model keeps its config (a preset's config values are never applied to it)
    config = "the config of --model_name_or_path" if args.model_name_or_path else "the config defaults"
    return f"no --preset: the VOC recipe of a {model} model, with {config}"


def rfm_start_source(args: argparse.Namespace) -> str:
    """Where the RFM start step of this run comes from (printed with the configuration)."""
    if args.rfm_start_step is not None:
        return "--rfm_start_step"
    if args.model_name_or_path:
        return "the config of --model_name_or_path"
    if args.recipe == "toy":
        return "the toy recipe"
    if args.preset:
        return f"--preset {args.preset}"
    if args.recipe == VOC_PRESET_OF_MODEL_TYPE["weclip_plus"]:
        return (
            "WeCLIP+'s config default: RFM+ from the first step, as the official code and --preset voc-plus"
        )
    return "config default = the paper's 15000, as no --preset was given; --preset voc would use 9144"


# ---- data -------------------------------------------------------------------------------------------


def prepare_data(
    args, train, val, num_classes: int, ignore_index: int, accelerator, normalization, class_names=None
):
    """The training set of the flags (`training_set`; the first --max_train_samples examples) and the evaluation
    set of the validation split (None without one)."""
    if args.max_train_samples and is_streaming(train):
        train = train.take(args.max_train_samples)
    elif args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    augment = TrainAugmentation(
        args.crop_size,
        (args.scale_min, args.scale_max),
        ignore_index=ignore_index,
        normalization=normalization,
    )
    # the validation split's label column read as the training split's
    reading = LabelReading.from_args(args, class_names)
    train_set, summary = training_set(
        train,
        num_classes,
        augment,
        reading,
        require_mask=args.fully_supervised,
        seed=args.seed,
        shuffle_buffer_size=args.shuffle_buffer_size,
        labelling=accelerator.main_process_first,
    )
    accelerator.print(f"train: {summary}")
    val_set = None
    if val is not None:
        # a streamed split is read once: evaluation indexes it
        val_set, val_summary = evaluation_set(
            val,
            num_classes,
            ignore_index,
            normalization,
            reading,
            max_samples=args.max_eval_samples,
            labelling=accelerator.main_process_first,
        )
        accelerator.print(f"validation: {val_summary}")
    return train_set, val_set


# ---- model ------------------------------------------------------------------------------------------


def build_model(
    args, names: dict, tokenizer: PreTrainedTokenizerBase | None = None
) -> WeCLIPForSemanticSegmentation:
    """A fresh WeCLIP from ``--clip_model_name_or_path`` (WeCLIP+ with ``--dino_model_name_or_path`` or a WeCLIP+
    preset; preset, recipe and model flags applied; its text embeddings computed with ``tokenizer``, by default the
    CLIP's), or the saved model of ``--model_name_or_path`` with the model flags given on the command line applied to
    its config."""
    if args.model_name_or_path:
        # checked before loading (read once: parse_args may have read it)
        saved = saved_config(args)
        # a flag of the weights or text embeddings restating the trained model's value changes nothing
        fixed = [k for k in args.given_model_flags if k in WEIGHT_FLAGS and getattr(args, k) != saved.get(k)]
        if fixed:
            raise ValueError(
                f"--{fixed[0]} {getattr(args, fixed[0])!r} cannot be applied to the trained model of "
                f"--model_name_or_path (its {fixed[0]}: {saved.get(fixed[0])!r}): it would change its weights or text "
                "embeddings. Start from --clip_model_name_or_path instead."
            )
        overrides = {k: getattr(args, k) for k in args.given_model_flags if k not in WEIGHT_FLAGS}
        with naming_the_model_flag(args.model_name_or_path):
            return AutoModelForSemanticSegmentation.from_pretrained(args.model_name_or_path, **overrides)
    overrides = preset_config_kwargs(config_preset(args))
    overrides.update({k: v for k, v in names.items() if v is not None})
    for key in CONFIG_FLAGS:
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    plus = model_type_of_args(args) == "weclip_plus"
    return model_from_backbones(
        clip_source(args),
        args.dino_model_name_or_path,
        plus,
        tokenizer=tokenizer,
        **with_class_names(overrides, args.class_names),
    )


def embeddings_tokenizer(
    args: argparse.Namespace, log: Callable[[str], None]
) -> PreTrainedTokenizerBase | None:
    """The tokenizer of the model's text embeddings, which the run saves with the model (new class names need it):
    a fresh model's CLIP's (`clip_tokenizer`); a trained model's (``--model_name_or_path``) own, else that of the Hub
    CLIP its config records, from the local Hub cache only (the run fetches nothing it did not); else None, which
    ``log`` says. Loaded once, before the data and the model: a CLIP without one fails the run before it trains."""
    if not args.model_name_or_path:
        return clip_tokenizer(clip_source(args))
    source = args.model_name_or_path
    # a Hub id's from the repository the model comes from (None offline, where the cache lacks it)
    marker = TOKENIZER_FILES[1]
    missing = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    if cached_file(source, marker, **missing):
        with naming_the_model_flag(source):
            return AutoTokenizer.from_pretrained(source)
    # the CLIP's Hub id, which `from_clip` records in the vision config ("": a local CLIP)
    clip = saved_config(args).get("vision_config", {}).get("_name_or_path") or None
    # try_to_load_from_cache answers a path where the cache holds the file (else None, or a marker of its absence)
    if clip and isinstance(try_to_load_from_cache(clip, marker), str):
        return AutoTokenizer.from_pretrained(clip, local_files_only=True)
    where = (
        f"the tokenizer of the CLIP its config records ({clip}) is not in the local Hub cache"
        if clip
        else "its config records no Hub CLIP"
    )
    log(
        f"Note: --model_name_or_path {source} holds no tokenizer, and {where}: the model will be saved without one "
        "(new class names need the tokenizer of the CLIP it was built from: save it in the folder, "
        "AutoTokenizer.from_pretrained(clip).save_pretrained(folder))."
    )
    return None


def config_preset(args: argparse.Namespace) -> str | None:
    """The preset whose config values a fresh model takes: --preset, else the toy one for the toy recipe."""
    return args.preset or ("toy" if args.recipe == "toy" else None)


def resolved_before_loading(args: argparse.Namespace) -> dict:
    """The values in effect of `RESOLVED_ARGS` that the arguments fix (as `resolved_trajectory` states them), which
    `check_resume` compares before the data and model load: a model flag as given, else the saved config's value
    (--model_name_or_path), else the preset's, else the config's default; the CLIP of a fresh model; a stream's
    --max_train_samples. Left to the values once loaded: the names and prompt a dataset may set
    (`DATASET_NAME_FIELDS`), the fields the config derives (from the CLIP's depth) and the training set's size."""
    if args.model_name_or_path:
        defaults = saved_config(args)
    else:
        config_class = WeCLIPPlusConfig if model_type_of_args(args) == "weclip_plus" else WeCLIPConfig
        defaults = {**config_class.constructor_defaults(), **preset_config_kwargs(config_preset(args))}
        defaults = {key: value for key, value in defaults.items() if key not in DATASET_NAME_FIELDS}
    values = {
        key: defaults.get(key) if getattr(args, key) is None else getattr(args, key) for key in CONFIG_FLAGS
    }
    # a None default is derived by the config, or a field this model type lacks
    known = {key: value for key, value in values.items() if value is not None}
    known["clip_model_name_or_path"] = None if args.model_name_or_path else recorded_clip(clip_source(args))
    if args.streaming:
        known["max_train_samples"] = args.max_train_samples
    return json.loads(json.dumps(known))


def unread_flags(args: argparse.Namespace, cfg: WeCLIPConfig) -> list[str]:
    """Notes on model flags given that this model never reads: --cam_box_threshold of a WeCLIP+ without the box
    mask (voc-plus's recipe)."""
    if "cam_box_threshold" in args.given_model_flags and not getattr(cfg, "rfm_use_box_mask", True):
        return [
            "--cam_box_threshold has no effect: this WeCLIP+ model masks no box (rfm_use_box_mask false, as the "
            "voc-plus recipe; coco-plus's masks one, as --rfm_use_box_mask does)."
        ]
    return []


def clip_source(args) -> str:
    """The CLIP a fresh model is built from: --clip_model_name_or_path, else the recipe's default (the toy CLIP
    shipped in the package for the toy recipe)."""
    return args.clip_model_name_or_path or default_clip_model(toy=args.recipe == "toy")


def compile_mode(args, device: torch.device) -> str | None:
    """The torch.compile mode in effect on ``device``: --torch_compile_mode, else with inductor reduce-overhead on a
    GPU and default elsewhere (None: another backend's default, which torch passes it for "default" too)."""
    if args.torch_compile_mode is None and args.torch_compile_backend == "inductor":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return compile_mode_in_effect(args.torch_compile_backend, args.torch_compile_mode)


def compiled_forward(args, model, device: torch.device):
    """``--torch_compile``: ``model`` (as prepared: under DDP the wrapper, whose graphs torch splits at its gradient
    buckets) through `torch.compile`; the module itself stays uncompiled for evaluation and saving."""
    return torch.compile(model, backend=args.torch_compile_backend, mode=compile_mode(args, device))


def run_computation(args, device: torch.device, threads: int | None) -> Computation:
    """How this run computes on ``device`` with ``threads`` (a CPU run's; None on an accelerator), which orders
    its float sums: what its checkpoints record and a resume compares (`computation_change_warning`)."""
    if not args.torch_compile:
        return Computation(device.type, torch_compile=False, threads=threads)
    return Computation(device.type, True, args.torch_compile_backend, compile_mode(args, device), threads)


def build_image_processor(args, config: WeCLIPConfig) -> WeCLIPImageProcessor:
    """The processor saved with the model, whose normalization the training and evaluation data use: that of
    ``--image_processor_name_or_path``, else of ``--model_name_or_path`` (if it holds one), else the default;
    its size is this run's evaluation size, its patch size and label ignore index the model's (``config``)."""
    settings = {**processor_settings(config), "size": processor_size(args.eval_long_side, args.crop_size)}
    if args.image_processor_name_or_path:  # named on the command line: it must hold one
        return WeCLIPImageProcessor.from_pretrained(args.image_processor_name_or_path, **settings)
    return WeCLIPImageProcessor.from_saved_or_default(args.model_name_or_path, **settings)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a training batch to ``device`` (asynchronously from pinned memory), except ``class_labels``."""
    return {k: v if k == "class_labels" else v.to(device, non_blocking=True) for k, v in batch.items()}


# ---- outputs ----------------------------------------------------------------------------------------


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


def default_num_workers(device_type: str, num_processes: int) -> int:
    """DataLoader workers when ``--num_workers`` is not given: up to 4 per process on an accelerator, 0 on
    the CPU."""
    return 0 if device_type == "cpu" else min(4, cores_per_local_process(num_processes))


# ---- main -------------------------------------------------------------------------------------------


def step_seed(seed: int, step: int, process_index: int) -> int:
    """The seed of one process's step (its decoder dropout): a function of (seed, step, process), so that a resumed
    run repeats an uninterrupted one exactly. Processes 0-63: ``(seed * 1_000_003 + step) * 64 + process``, as
    always, distinct for every (step, process); further ones (whose formula would repeat process 0's seed of a
    later step) a 64-bit hash of the three (`numpy.random.SeedSequence`)."""
    if process_index < 64:
        return ((seed * 1_000_003 + step) * 64 + process_index) % 2**64  # torch.manual_seed's range
    return int(np.random.SeedSequence([seed % 2**64, step, process_index]).generate_state(1, np.uint64)[0])


def training_step(
    args: argparse.Namespace,
    accelerator: Accelerator,
    train_forward: Callable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: dict,
    step: int,
    stop_signal: int = 0,
) -> tuple[WeCLIPSemanticSegmenterOutput, int]:
    """One optimizer step on ``batch`` (moved to the device here); returns the model output and the signal that a
    process got (its number, 0 for none; ``stop_signal``: this process's), agreed by all (`check_losses_finite`)."""
    batch = to_device(batch, accelerator.device)
    torch.manual_seed(step_seed(args.seed, step, accelerator.process_index))
    out = train_forward(**batch)  # what `WeCLIPDataCollator` chose for --fully_supervised / --ignore_padding
    gather = accelerator.gather if accelerator.num_processes > 1 else None
    stop = check_losses_finite(out, step, gather, stop_signal)
    accelerator.backward(out.loss)
    optimizer.step()
    # fp16: a step the gradient scaler skipped (inf/NaN gradients) leaves the learning-rate schedule where it is,
    # as transformers' Trainer does
    if not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return out, stop


def make_train_loader(
    args, train_set, accelerator: Accelerator
) -> tuple[DataLoader, EpochShuffleSampler | None]:
    """The training DataLoader (whole batches of what the model is to be given: `WeCLIPDataCollator`) and, for a
    map-style dataset, its epoch-keyed sampler."""
    streamed = isinstance(train_set, StreamingWeakSegmentationDataset)
    sampler = None if streamed else EpochShuffleSampler(len(train_set), seed=args.seed)
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = default_num_workers(accelerator.device.type, accelerator.num_processes)
    train_loader = DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=WeCLIPDataCollator(args.fully_supervised, args.ignore_padding),
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    # batches stay on the host: `to_device` moves all but the image-level labels, from which the model
    # plans its (image, class) pairs without a device-to-host sync
    train_loader = accelerator.prepare_data_loader(train_loader, device_placement=False)
    if not streamed:
        check_fills_a_batch(len(train_set), args.per_device_train_batch_size, accelerator.num_processes)
    return train_loader, sampler


def append_log(log_path: Path, record: dict) -> None:
    """One JSON line of the training log (``train_log.jsonl``)."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_losses(accelerator: Accelerator, out, step: int, lr: float, log_path: Path) -> dict:
    """The step's losses (mean over processes), learning rate and RFM flag, to the trackers and the log (main
    process); returns the record."""
    # under DDP each process's loss is scaled so that their mean is the global-batch loss
    named = present_losses(out, LOGGED_LOSSES)
    losses = accelerator.reduce(torch.stack(list(named.values())).detach(), "mean").tolist()
    record = {"step": step, **dict(zip(named, losses)), "lr": lr, "rfm": bool(out.used_rfm)}
    accelerator.log(record, step=step)
    if accelerator.is_main_process:
        append_log(log_path, record)
    return record


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


def dataset_description(args) -> str:
    """What the run trained on, as the model card names it: the Hub id, the local folder's name, or the toy world."""
    if args.dataset_name:
        return args.dataset_name
    local = args.data_dir or args.dataset_path
    if local:
        return f"{Path(local).resolve().name} (a local dataset)"
    return "the toy world of weclip-hf (generated offline)"


def card_args(args, accelerator: Accelerator | None = None) -> dict:
    """The arguments the model card lists: those given or filled by the recipe, without this machine's
    (`NOT_ON_CARD`), the toy world's sizes only where the toy world was trained on, local folders by their names;
    with ``accelerator``, how it launched the run (`LAUNCH_FACTS`: the processes, whose number times the per-device
    batch is the global one, and the mixed precision)."""
    unused = NOT_ON_CARD if names_no_dataset(args) else NOT_ON_CARD | {"toy_train_images", "toy_val_images"}
    listed = {k: v for k, v in public_args(args).items() if v is not None and k not in unused}
    launch = {key: getattr(accelerator, key) for key in LAUNCH_FACTS} if accelerator is not None else {}
    return {**{k: public_source_name(str(v)) if k in PATH_ARGS else v for k, v in listed.items()}, **launch}


def write_card(
    args,
    cfg,
    output_dir: Path,
    summary: dict,
    split: str | None = None,
    accelerator: Accelerator | None = None,
) -> None:
    """The model card (README.md) of the trained model in ``output_dir``, with its mIoU figures on ``split`` and the
    launch of ``accelerator`` among its training arguments."""
    figures = {k: v for k, v in summary.items() if "miou" in k}
    metrics, other_metrics = split_model_metrics(figures)
    repo_id = card_repo_id(args.hub_model_id, output_dir)
    card = make_model_card(
        cfg,
        repo_id.split("/")[-1],
        "Trained with `examples/train.py` of weclip-hf.",
        repo_id=repo_id,
        metrics=metrics,
        other_metrics=other_metrics,
        dataset_name=args.dataset_name,
        dataset_description=dataset_description(args),
        dataset_split=split,
        weakly_supervised=not args.fully_supervised,
        mask_source=(
            "the pseudo masks of a first stage (examples/generate_pseudo_labels.py)"
            if holds_pseudo_masks(args.data_dir)
            else None
        ),
        training_args=card_args(args, accelerator),
    )
    save_model_card(card, output_dir)


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's `Accelerator`: its trackers, its output folder and the process group's ``--ddp_timeout``."""
    return Accelerator(
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=args.ddp_timeout))],
    )


def main(argv=None) -> dict:
    """Run training as the command line ``argv`` says; returns the final metrics."""
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    # accelerate configured for accumulation (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, a DeepSpeed config; `accelerate
    # launch --gradient_accumulation_steps` sets it for DeepSpeed only, and is ignored otherwise, unseen here)
    if accelerator.gradient_accumulation_steps > 1:
        raise ValueError(
            f"accelerate asks for gradient accumulation over {accelerator.gradient_accumulation_steps} batches, "
            "which train.py does not do (it steps the optimizer after every batch, and WeCLIP's losses are "
            "normalized per batch by pixels its forward labels): remove the accumulation from the accelerate "
            "configuration (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, the DeepSpeed config) and give a larger "
            "--per_device_train_batch_size or more processes (one global batch, exactly)."
        )
    if not accelerator.is_main_process:
        return train(args, accelerator)
    with output_dir_held(Path(args.output_dir)):
        return train(args, accelerator)


def load_data_and_model(
    args, accelerator: Accelerator, retained: bool, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[WeCLIPForSemanticSegmentation, WeCLIPImageProcessor, Dataset, Dataset | None]:
    """Phase 1: the model (`build_model`; a fresh one's text embeddings computed with ``tokenizer``), its image
    processor, and the training and validation sets (normalized with that processor's statistics); ``retained``:
    freed host memory is kept for reuse (for the summary line)."""
    train_raw, val_raw, names = load_dataset_splits(
        # the toy world when no dataset is named (--preset toy may name one)
        DataSource.from_args(args, toy_sizes=(args.toy_train_images, args.toy_val_images)),
        train_split=args.train_split,
        validation_split=args.validation_split,
        preset=args.preset,
        train_val_split=args.train_val_split,
        labels_column=args.labels_column,
        # the dataset's ClassLabel names are the classes of a new model not given --class_names
        dataset_classes=not (args.class_names or args.model_name_or_path),
        log=accelerator.print,
    )
    model = build_model(args, names, tokenizer)
    # the recipe's evaluation settings are the model's (evaluate.py, segment.py), and a continuing run's recipe
    model.config.training_preset = args.recipe
    from_dataset = not (args.preset or args.class_names or args.model_name_or_path or names_no_dataset(args))
    if "class_names" in names and from_dataset:
        accelerator.print(dataset_classes_note(names["class_names"]))
    cfg = model.config
    image_processor = build_image_processor(args, cfg)
    accelerator.print(
        f"recipe {args.recipe} ({recipe_source(args)}), {cfg.num_foreground_classes} classes, "
        f"{args.max_train_steps} steps of {args.per_device_train_batch_size} x "
        f"{accelerator.num_processes} images, lr {args.learning_rate}, "
        + (
            "fully supervised (no pseudo labels)"
            if args.fully_supervised
            else f"RFM after {cfg.rfm_start_step} steps ({args.rfm_start_source})"
        )
        + f", on {accelerator.device}"
        + (f" with {torch.get_num_threads()} threads" if accelerator.device.type == "cpu" else "")
        + (", freed host memory kept for reuse" if retained else "")
    )
    for note in [
        # a fully supervised run trains on the masks: when the RFM or self-training would start does not matter
        *(
            []
            if args.fully_supervised
            else schedule_notes(
                cfg,
                int(model.training_step),
                args.max_train_steps,
                rfm_source=args.rfm_start_source,
                rfm_aside=" metrics.json's pseudo_label_miou applies the RFM to the trained model all the same."
                if val_raw is not None
                else "",
            )
        ),
        *unread_flags(args, cfg),
    ]:
        accelerator.print(f"Note: {note}")
    if val_raw is None:
        why = (
            "--validation_split none"
            if args.validation_split == "none"
            else "the dataset has no validation split"
        )
        accelerator.print(f"Note: {why}: no evaluation (metrics.json has no mIoU).")
    train_set, val_set = prepare_data(
        args,
        train_raw,
        val_raw,
        cfg.num_foreground_classes,
        cfg.semantic_loss_ignore_index,
        accelerator,
        PixelNormalization.from_image_processor(image_processor),
        class_names=list(zip(cfg.label_names, cfg.class_names)),
    )
    return model, image_processor, train_set, val_set


def train(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """Phases 1-5 of the module docstring, in an ``--output_dir`` this process holds the lock on."""
    set_seed(args.seed)
    retained = False
    # the torch threads of a CPU run, which order its float sums as the device and torch.compile do (checkpoints
    # record all three)
    threads = None
    if accelerator.device.type == "cpu":
        threads = args.num_threads or cores_per_local_process(accelerator.num_processes)
        torch.set_num_threads(threads)
        retained = not args.release_host_memory and retain_freed_host_memory()
    computation = run_computation(args, accelerator.device, threads)
    output_dir = Path(args.output_dir)
    previous_run = claim_output_dir(
        output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, tracker_dirs=(TRACKER_PROJECT,)
    )
    resume_path = None
    if args.resume_from_checkpoint:  # checked before the data and model are loaded
        resume_path = find_checkpoint(output_dir, args.resume_from_checkpoint, log=accelerator.print)
        known = resolved_before_loading(args)
        check_resume(
            args, resume_path, accelerator, log=accelerator.print, known=known, computation=computation
        )
    if args.push_to_hub and accelerator.is_main_process:  # fail now, not after the training
        # the repository's full id (user/name, also for a name given without a user), which the card loads
        args.hub_model_id = create_hub_repo(args.hub_model_id, token=args.hub_token)
        accelerator.print(f"pushing to {args.hub_model_id} at the end")
    started = time.time()

    # 1. data and model (the tokenizer of the text embeddings first: saved with the model, and fails no later)
    tokenizer = embeddings_tokenizer(args, accelerator.print)
    model, image_processor, train_set, val_set = load_data_and_model(args, accelerator, retained, tokenizer)
    streamed = isinstance(train_set, StreamingWeakSegmentationDataset)
    clip = None if args.model_name_or_path else clip_source(args)
    args.resolved = resolved_trajectory(args, model, clip, None if streamed else len(train_set))
    if resume_path is not None:
        check_resolved(resume_path, args.resolved)
    train_loader, sampler = make_train_loader(args, train_set, accelerator)

    # 2. optimizer and schedule (decoder only; the frozen CLIP has no trainable parameter)
    recipe = TrainingRecipe(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainingRecipe)}
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_forward = compiled_forward(args, model, accelerator.device) if args.torch_compile else model
    if previous_run and accelerator.is_main_process:  # --overwrite_output_dir, now that the run is set up
        remove_previous_run(previous_run)
    accelerator.wait_for_everyone()
    # the scheduler and the stream position are checkpointed as JSON (training_state.json), never registered
    # with accelerate, whose custom objects are unpickled with weights_only=False (code in a checkpoint would run)
    position = StreamPosition()  # streamed data: pass and batch (map-style: derived from the step)
    if args.with_tracking:
        accelerator.init_trackers(
            TRACKER_PROJECT,
            {k: v for k, v in public_args(args).items() if isinstance(v, (int, float, str, bool))},
        )

    # 3. resume
    step = 0
    log_path = output_dir / "train_log.jsonl"
    evaluation_missed = False  # the evaluation of the step resumed at, not in the log
    frozen = FrozenWeights.of(accelerator.unwrap_model(model))  # the backbones, which checkpoints leave out
    if resume_path is not None:
        state = load_checkpoint(accelerator, model, optimizer, resume_path, frozen)
        if holds_frozen_weights(resume_path):  # an earlier version's: the backbones were read back from it
            frozen = FrozenWeights.of(accelerator.unwrap_model(model))
        scheduler.load_state_dict(state.scheduler)
        step, position = state.step, state.position
        if state.seconds is None:
            accelerator.print(
                f"Note: {resume_path} records no training time: train_seconds counts this run only."
            )
        else:  # the run's times count its earlier segments too
            started -= state.seconds
        # read by every process before the main one cuts the log back (which keeps the records of ``step``)
        evaluation_missed = not logged_evaluation(log_path, step)
        if accelerator.is_main_process:
            truncate_log(log_path, step)
        accelerator.print(f"resumed from {resume_path} at step {step}")

    # 4. training loop
    # the checkpoint of the step the run stands at, once written (the loop's, or the one resumed from in this folder)
    written = {}
    if resume_path is not None and resumes_in_place(output_dir, args.resume_from_checkpoint):
        written[step] = resume_path

    def checkpoint() -> Path:
        """``step_N`` of the run as it stands (step, schedule, stream position, seconds so far), written once."""
        if step not in written:
            state = TrainingState(step, scheduler.state_dict(), position, time.time() - started, computation)
            written.clear()
            written[step] = save_training_checkpoint(accelerator, output_dir, state, args, frozen)
            if args.checkpoints_total_limit and accelerator.is_main_process:
                prune_checkpoints(output_dir, args.checkpoints_total_limit, written[step], accelerator.print)
        return written[step]

    def evaluation_due() -> bool:
        """Whether ``--eval_steps`` evaluates the step the run stands at."""
        return bool(args.eval_steps) and step % args.eval_steps == 0 and val_set is not None

    def evaluate() -> None:
        """``--eval_steps``' evaluation of the step the run stands at (`evaluate_in_training`), logged."""
        input_size = processor_input_size(image_processor)
        evaluate_in_training(
            args, accelerator, accelerator.unwrap_model(model), val_set, step, log_path, input_size
        )
        model.train()

    checkpoint_every = args.checkpointing_steps
    steps_per_epoch = None if streamed else len(train_loader)
    bar = tqdm(
        total=args.max_train_steps,
        initial=step,
        desc="training",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    # a run stopped (or killed) at an evaluation step saved the checkpoint first: its evaluation is done now, as the
    # uninterrupted run did it before the next step (the steps' dropout is seeded by the step: no change to them)
    if evaluation_missed and evaluation_due():
        evaluate()
    # a signal is acted on when every process knows of it: one process after the step it came in, several after the
    # step whose loss check agreed on it (`training_step`), all after the same step
    stop_agreed = 0  # the signal every process knows of (its number)
    with stop_on_signals() as stop:  # leaving it, Ctrl-C / SIGTERM act at once again

        def stopping() -> bool:
            return bool(stop_agreed) or (accelerator.num_processes == 1 and stop["signal"] is not None)

        while step < args.max_train_steps and not stopping():
            # a resumed pass is replayed from its start; the batches already trained on are skipped
            if streamed:
                epoch, offset = position.epoch, position.batch
            else:
                epoch, offset = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            # the prepared loader re-sets the epoch of sampler / dataset to its own pass counter when iterated:
            # align that counter too (a resumed run starts it at 0)
            train_loader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_loader, offset) if offset else train_loader
            pass_ended = True
            for batch in loader:
                # the learning rate of this step's update (training_step steps the scheduler after it)
                lr = scheduler.get_last_lr()[0]
                out, stop_agreed = training_step(
                    args,
                    accelerator,
                    train_forward,
                    optimizer,
                    scheduler,
                    batch,
                    step,
                    stop["signal"] or 0,
                )
                step += 1
                position.batch += 1
                bar.update(1)
                if step % args.logging_steps == 0 or step == args.max_train_steps:
                    record = log_losses(accelerator, out, step, lr, log_path)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", rfm=record["rfm"])
                if checkpoint_every and step % checkpoint_every == 0:
                    checkpoint()
                # (not once stopping: the checkpoint first, within a signal's grace period)
                if evaluation_due() and not stopping():
                    evaluate()
                if step >= args.max_train_steps or stopping():
                    pass_ended = False
                    break
            if streamed and pass_ended:
                if position.batch == 0:
                    raise ValueError(
                        "The training stream holds fewer than one "
                        f"{global_batch(args.per_device_train_batch_size, accelerator.num_processes)}."
                    )
                position.epoch, position.batch = position.epoch + 1, 0
        bar.close()
        # a signal after the last agreement (one process: any signal): asked of every process once more
        if not stop_agreed:
            flag = torch.tensor([stop["signal"] or 0], device=accelerator.device)
            several = accelerator.num_processes > 1
            stop_agreed = int(accelerator.gather(flag).max() if several else flag)
    if stop_agreed:
        path = checkpoint()
        accelerator.print(f"stopped by signal {stop_agreed} at step {step}; checkpoint saved to {path}")
        accelerator.end_training()
        return {"stopped_at": step, "stopped_by_signal": stop_agreed}
    if checkpoint_every:  # the last step's (written by the loop where it falls on --checkpointing_steps)
        checkpoint()
    train_seconds = time.time() - started

    # 5. save the model, final evaluation, artifacts, push
    return finish_training(
        args,
        accelerator,
        accelerator.unwrap_model(model),
        image_processor,
        tokenizer,
        val_set,
        step,
        started,
        train_seconds,
    )


def finish_training(
    args: argparse.Namespace,
    accelerator: Accelerator,
    unwrapped: WeCLIPForSemanticSegmentation,
    image_processor: WeCLIPImageProcessor,
    tokenizer: PreTrainedTokenizerBase | None,
    val_set: Dataset | None,
    step: int,
    started: float,
    train_seconds: float,
) -> dict:
    """Phase 5: save the model, its processor and the ``tokenizer`` of its text embeddings (before evaluating: a
    failing or interrupted evaluation loses no training), the final evaluation, metrics.json, the model card, the
    push; returns the metrics."""
    output_dir = Path(args.output_dir)
    cfg = unwrapped.config
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir)
        image_processor.save_pretrained(output_dir)
        save_tokenizer(tokenizer, output_dir)
    written: list[str] = []  # of metrics.json and README.md, for the message of a signal

    def explain(signum: int) -> str:
        return unfinished_message(
            args, step, signum, written, evaluable=val_set is not None, with_tokenizer=tokenizer is not None
        )

    with explain_signals(explain, accelerator.print):
        metrics: dict = {"train_steps": step, "train_seconds": round(train_seconds, 1)}
        if val_set is not None:
            input_size = processor_input_size(image_processor)  # scored as the pipeline predicts
            metrics.update(final_evaluation(args, accelerator, unwrapped, val_set, output_dir, input_size))
        metrics["total_seconds"] = round(time.time() - started, 1)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            written.append("metrics.json")
            summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
            accelerator.log(
                {f"final_{k}": v for k, v in summary.items()}, step=step
            )  # --with_tracking's trackers
            split = val_set.split if val_set is not None else None
            write_card(args, cfg, output_dir, summary, split, accelerator)
            written.append("README.md")
            accelerator.print(json.dumps(summary, indent=2))
            saved = [
                "the model (from_pretrained and the pipeline load the folder)",
                *(["the CLIP tokenizer of its text embeddings"] if tokenizer is not None else []),
                "metrics.json",
                "its card",
            ]
            if args.num_overlays and val_set is not None:
                saved.append("overlays/")
            if args.checkpointing_steps:
                saved.append("the checkpoints step_N/")
            accelerator.print(f"Saved to {output_dir}: {', '.join(saved)}.")
            if args.push_to_hub:
                publish_folder(
                    output_dir, args.hub_model_id, token=args.hub_token, commit_message="End of training"
                )
    accelerator.end_training()
    return metrics


def save_tokenizer(tokenizer: PreTrainedTokenizerBase | None, output_dir: Path) -> None:
    """Save the ``tokenizer`` of the model's text embeddings beside it; without one (`embeddings_tokenizer`), remove
    the tokenizer that a run --overwrite_output_dir replaced left there, which need not be this model's."""
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
        return
    for name in TOKENIZER_FILES:
        (output_dir / name).unlink(missing_ok=True)


def unfinished_message(
    args: argparse.Namespace,
    step: int,
    signum: int,
    written: list[str],
    evaluable: bool,
    with_tokenizer: bool = False,
) -> str:
    """What a run stopped by signal ``signum`` after its training (in the final evaluation, the writing of its
    metrics and card, or the push) has saved (``with_tokenizer``: the model's tokenizer too), what it has not
    (``written``: of metrics.json and README.md), and how to finish: `evaluate_command` scores the saved model
    (``evaluable``: the run has a validation split)."""
    output_dir = Path(args.output_dir)
    model_files = ("model.safetensors", "config.json", "preprocessor_config.json")
    files = ", ".join(model_files + (TOKENIZER_FILES if with_tokenizer else ()))
    saved = f"the trained model (step {step}) is saved in {output_dir} ({files})"
    missing = [name for name in ("metrics.json", "README.md") if name not in written]
    if not missing:  # only the push was left
        return (
            f"stopped by signal {signum} while pushing to {args.hub_model_id}: {saved} with its metrics.json and "
            f"README.md; push the folder again (huggingface_hub's upload_folder)."
        )
    finish = f"; score it with: {evaluate_command(args)}" if evaluable else ""
    again = " without --overwrite_output_dir" if args.overwrite_output_dir else ""
    resume = (
        f", or finish the run: the same command{again} with --resume_from_checkpoint latest (its last checkpoint)"
        if args.checkpointing_steps
        else ""
    )
    return (
        f"stopped by signal {signum} after the training: {saved}, but not {' and '.join(missing)}{finish} "
        f"(or train again with --overwrite_output_dir){resume}."
    )


def evaluate_command(args: argparse.Namespace) -> str:
    """The examples/evaluate.py command line that scores the model of this run's ``--output_dir`` on its
    validation data as the final evaluation does (the CAM / RFM pseudo labels, the multi-scale decoder unless
    ``--no_msf``; the saved processor's size)."""
    flags = EVALUATE_DATA_FLAGS + (EVALUATE_TOY_FLAGS if names_no_dataset(args) else ())
    if args.train_val_split:  # the held-out rows: that split of that seed
        flags = tuple(dict.fromkeys((*flags, "train_val_split", "train_split", "seed")))
    words = ["python", "examples/evaluate.py", "--model_name_or_path", args.output_dir, "--pseudo_labels"]
    for flag in flags:
        value = getattr(args, flag)
        if value is True:
            words.append(f"--{flag}")
        elif value is not None and value is not False:  # a seed of 0 is given
            words += [f"--{flag}", str(value)]
    if not args.no_msf:
        words += ["--msf", "--scales", *map(str, args.msf_scales)]
    words += ["--batch_size", str(args.per_device_eval_batch_size)]
    return shlex.join(words)


if __name__ == "__main__":
    raise SystemExit(exit_status(main()))
