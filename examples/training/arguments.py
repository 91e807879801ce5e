"""The command line of examples/train.py: its flags and their checks, the recipe's values filled in, and what
the arguments resolve to before anything loads (why the run follows its recipe, where its RFM start comes from, the
CLIP of a fresh model, the values a resume compares).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weclip_hf import WeCLIPConfig, WeCLIPPlusConfig
from weclip_hf.data.sources import DATASET_NAME_FIELDS, names_no_dataset
from weclip_hf.data.toy import default_clip_model
from weclip_hf.presets import PRESETS, VOC_PRESET_OF_MODEL_TYPE, get_preset, preset_config_kwargs
from weclip_hf.run_folder import OVERWRITE_AND_RESUME, resumes_in_place
from weclip_hf.script_arguments import (
    CLASS_NAMES_HELP,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    TRAIN_VAL_SPLIT_HELP,
    add_data_source_flags,
    add_multiscale_flags,
    add_toy_size_flags,
    at_least_one,
    check_backbone_flags,
    check_hub_token,
    check_output_path,
    check_preset_fits_data,
    check_preset_fits_model,
    check_saved_model_flag,
    check_source_flags,
    config_values,
    fraction,
    model_type_of_args,
    non_negative,
    one_flag_note,
    positive_float,
    recipe_name,
    recipe_values,
    saved_config,
    saved_training_preset,
)
from weclip_hf.trajectory import CONFIG_FLAGS, PLUS_MODEL_FLAGS, recorded_clip


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """The arguments of the command line ``argv`` (``description``: the help's first paragraph, the script's),
    checked, with the recipe's values filled in."""
    p = argparse.ArgumentParser(description=description)
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
        help="config values, training recipe and evaluation settings of weclip_hf.presets (RFM start: "
        f"{config_values('rfm_start_step')}); a --dataset_name without --preset trains with the recipe a "
        "--model_name_or_path was trained with (its config's training_preset), else the VOC recipe of the model type (voc, voc-plus for "
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
        "--cam_feature_block",
        type=int,
        help="the CLIP block output the last block is applied to for GradCAM, counted from the end: -1 the block "
        "before the last (WeCLIP's and COCO's), -2 the one before it (the official VOC quirk) "
        f"({config_values('cam_feature_block', '-2')})",
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
        "written always stays; a resumed run may change it); default: keep all (a VOC/COCO checkpoint is ~70 MB: "
        "the frozen CLIP is left out)",
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
    # as evaluate.py's and segment.py's flags: --msf (the default here), --scales
    add_multiscale_flags(train, f"the recipe's, {recipe_values('msf_scales')}", evaluated_in_training=True)
    train.add_argument(
        "--num_overlays",
        type=int,
        default=6,
        help="overlays of the first N validation images at the end (6; -1: all)",
    )
    train.add_argument(
        "--logging_steps",
        type=at_least_one,
        default=10,
        help="log the losses every N steps and at the last (10)",
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
    check_output_path(p, "--output_dir", args.output_dir)  # before the data and the model load
    if args.overwrite_output_dir and resumes_in_place(Path(args.output_dir), args.resume_from_checkpoint):
        p.error(OVERWRITE_AND_RESUME)
    backbones = [f for f in ("clip_model_name_or_path", "dino_model_name_or_path") if getattr(args, f)]
    if args.model_name_or_path and backbones:
        p.error(
            f"--{backbones[0]} builds a fresh model from a backbone, and --model_name_or_path continues a trained "
            "one (its backbones are in it): give one of them."
        )
    check_backbone_flags(p, args)  # before the data loads: the model is built after it
    check_saved_model_flag(p, args)  # the trained model it continues: before the data loads too
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
            "--msf_scales are the scales of the multi-scale evaluation, which --no_msf turns off: give "
            f"one{one_flag_note(p, 'msf_scales')}."
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


def config_preset(args: argparse.Namespace) -> str | None:
    """The preset whose config values a fresh model takes: --preset, else the toy one for the toy recipe."""
    return args.preset or ("toy" if args.recipe == "toy" else None)


def clip_source(args) -> str:
    """The CLIP a fresh model is built from: --clip_model_name_or_path, else the recipe's default (the toy CLIP
    shipped in the package for the toy recipe)."""
    return args.clip_model_name_or_path or default_clip_model(toy=args.recipe == "toy")


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
