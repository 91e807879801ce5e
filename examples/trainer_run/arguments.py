"""The command line of examples/train_with_trainer.py: this script's arguments (`WeCLIPArguments`, the
data and the model) and `TrainingArguments`, the recipe's values as their defaults, and their checks (the
phases --do_train / --do_eval ask for).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

from trainer_run.resume import resume_spec
from weclip_hf import WeCLIPConfig, WeCLIPPlusConfig
from weclip_hf.presets import PRESETS, TrainingRecipe, get_preset
from weclip_hf.script_arguments import (
    CLASS_NAMES_HELP,
    CONFIG_OVERRIDES_HELP,
    DATA_SOURCE_HELP,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    TRAIN_VAL_SPLIT_HELP,
    check_backbone_flags,
    check_hub_token,
    check_one_data_source,
    check_preset_fits_data,
    check_preset_fits_model,
    check_saved_model_flag,
    check_source_flags,
    fraction,
    model_type_of_args,
    parse_config_overrides,
    recipe_name,
    recipe_values,
)

TOY_SIZES = get_preset("toy").dataset.toy_sizes  # the toy world's (training, validation) images


def _flag(help: str, **metadata):
    """A `WeCLIPArguments` field without a default, with its ``--help`` text."""
    return field(default=None, metadata={"help": help, **metadata})


@dataclass
class WeCLIPArguments:
    """The data and the model of the run (`TrainingArguments` holds the rest)."""

    preset: str | None = _flag(
        "the recipe (TrainingArguments defaults) and config values of weclip_hf.presets; default: the toy "
        "world's without a dataset, else VOC's recipe with WeCLIPConfig's values",
        choices=sorted(PRESETS),
    )
    dataset_name: str | None = _flag("Hub dataset id (default: the offline toy world)")
    dataset_config_name: str | None = _flag(DATASET_CONFIG_HELP)
    data_dir: str | None = _flag(DATA_SOURCE_HELP["data_dir"])
    dataset_path: str | None = _flag(DATA_SOURCE_HELP["dataset_path"])
    train_split: str | None = _flag("the split to train on (default: the preset's, 'train_aug' else 'train')")
    validation_split: str | None = _flag(
        "the split scored (default: 'validation' where the dataset has it; 'none': no evaluation)"
    )
    train_val_split: float | None = _flag(TRAIN_VAL_SPLIT_HELP)
    image_column: str | None = _flag(IMAGE_COLUMN_HELP)
    mask_column: str | None = _flag(MASK_COLUMN_HELP)
    labels_column: str | None = _flag(LABELS_COLUMN_HELP)
    labels_zero_based: bool = field(default=False, metadata={"help": "image-level ids are 0..C-1"})
    class_names: list[str] | None = _flag(CLASS_NAMES_HELP)
    background_names: list[str] | None = _flag(
        "background words, one CLIP prompt each (default: the preset's, else VOC's 25)"
    )
    toy_train_images: int | None = _flag(f"toy world: training images ({TOY_SIZES[0]})")
    toy_val_images: int | None = _flag(f"toy world: validation images ({TOY_SIZES[1]})")
    rfm_start_step: int | None = _flag(
        "the training steps after which the RFM refines the pseudo labels (N: from step N+1 on; default: the "
        "preset's, else the config's)"
    )
    crop_size: int | None = _flag(
        f"side of the square training crops (default: the recipe's: {recipe_values('crop_size')})"
    )
    config_overrides: str | None = _flag(CONFIG_OVERRIDES_HELP)
    clip_model_name_or_path: str | None = _flag("default: the toy CLIP for the toy world, else CLIP ViT-B/16")
    dino_model_name_or_path: str | None = _flag(
        "WeCLIP+ on this DINOv2 (default for a WeCLIP+ preset: facebook/dinov2-small)"
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "start over in an --output_dir that holds a previous run (its checkpoints are removed)"
        },
    )
    model_name_or_path: str | None = _flag(
        "with --do_eval and without --do_train: the saved WeCLIP or WeCLIP+ model scored (a folder of this script or "
        "examples/train.py, or a Hub id); a run that trains builds its model from the backbones"
    )
    # no flag (set by parse_args): --do_train / --do_eval were given and ask for a final evaluation (--do_eval, or an
    # --eval_strategy), so a dataset without a validation split is refused (without them the run scores its model
    # where the data has one)
    evaluation_asked: bool = field(default=False, init=False)


# the largest ratio of a run below 1, which Trainer reads as its last step (ceil(WHOLE_RUN x steps) = steps)
WHOLE_RUN = math.nextafter(1.0, 0.0)


# `WeCLIPArguments` that build the model a run trains: a saved model (--model_name_or_path) is scored with its own
MODEL_FLAGS = (
    "clip_model_name_or_path", "dino_model_name_or_path", "class_names", "background_names", "rfm_start_step",
    "crop_size", "config_overrides",
)  # fmt: skip


def recipe_defaults(recipe: TrainingRecipe, max_steps: int, evaluate: bool) -> dict:
    """`TrainingArguments` defaults of a preset's ``recipe`` for a run of ``max_steps`` (-1: of --num_train_epochs,
    whose steps Trainer counts), whose evaluations (when ``evaluate``) and checkpoints fall at the recipe's points of
    its schedule (voc: every 1/15 of the run; for a run of epochs, as ratios of it)."""

    def every(steps: int) -> int | float:
        if max_steps > 0:
            return max(1, round(steps * max_steps / recipe.max_train_steps))
        # Trainer reads a value < 1 as a ratio of the run (ceil(ratio x steps)), 1 as step 1
        return min(steps / recipe.max_train_steps, WHOLE_RUN)

    checkpoints = every(recipe.checkpointing_steps or recipe.max_train_steps)
    return dict(
        output_dir="outputs/weclip-toy-trainer",
        seed=0,  # also the toy world's
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        # images of different sizes (VOC's) are batched by size (`collate_by_size`), so evaluation batches as training
        per_device_eval_batch_size=recipe.per_device_train_batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.num_warmup_steps,
        max_steps=max_steps,
        max_grad_norm=0.0,  # the official recipe clips no gradient
        dataloader_drop_last=True,  # whole batches, as examples/train.py
        dataloader_pin_memory=torch.cuda.is_available(),
        eval_strategy="steps" if recipe.eval_steps and evaluate else "no",
        # a recipe without evaluations (toy): an --eval_strategy steps run evaluates at its checkpoints (at Trainer's
        # logging_steps, a run of epochs mixed steps with ratios, which load_best_model_at_end refuses)
        eval_steps=every(recipe.eval_steps) if recipe.eval_steps else checkpoints,
        save_steps=checkpoints,
        logging_steps=50,
    )


def help_recipe_name(given: argparse.Namespace) -> str:
    """The recipe whose defaults --help shows: `recipe_name`'s, or, where the saved model of --model_name_or_path
    cannot be read (no such folder, a Hub id offline), the one the other flags pick."""
    try:
        return recipe_name(given)
    except (OSError, ValueError):
        return recipe_name(argparse.Namespace(**{**vars(given), "model_name_or_path": None}))


def parse_args(argv=None, description: str | None = None) -> tuple[WeCLIPArguments, TrainingArguments]:
    """The script's arguments and `TrainingArguments`, the flags left out taking the recipe's values
    (``description``: the help's first paragraph, the script's)."""

    def parser(**kwargs) -> HfArgumentParser:
        return HfArgumentParser((WeCLIPArguments, TrainingArguments), **kwargs)

    # what the defaults depend on; num_train_epochs None unless given (in any spelling: --num-train-epochs, --num_tr)
    first = parser(add_help=False)
    first.set_defaults(num_train_epochs=None, do_train=None, do_eval=None)
    given, _ = first.parse_known_args(argv)
    flags = {str(token).split("=")[0] for token in (sys.argv[1:] if argv is None else argv)}
    full = parser(description=description)
    if flags & {"-h", "--help"}:  # the help, whatever else is given
        recipe = get_preset(help_recipe_name(given)).training
    else:
        # before the recipe, which a saved model's config may pick: a folder that holds none is a usage error
        check_saved_model_flag(full, given)
        recipe = get_preset(
            recipe_name(given)
        ).training  # WeCLIP+'s VOC recipe with --dino_model_name_or_path
    max_steps = given.max_steps if given.max_steps > 0 else recipe.max_train_steps
    # Trainer counts epochs only without max_steps
    if given.num_train_epochs is not None and given.max_steps <= 0:
        max_steps = -1
    for action in full._actions:  # Trainer's text says biases and norms are exempt: WeCLIPTrainer's are not
        if action.dest == "weight_decay":
            action.help = (
                "weight decay; the official AdamW (the default --optim) decays every trained parameter, biases "
                "and norms too; another --optim gets Trainer's optimizer, which exempts them"
            )
    if "--max_train_steps" in flags:
        full.error(
            "--max_train_steps is examples/train.py's flag: give Trainer's --max_steps (or --num_train_epochs)."
        )
    full.set_defaults(**recipe_defaults(recipe, max_steps, given.validation_split != "none"))
    args, training_args = full.parse_args_into_dataclasses(argv)
    training_args.resume_from_checkpoint = resume_spec(training_args.resume_from_checkpoint)
    check_hub_token(full, training_args.hub_token)
    check_one_data_source(full, args)
    check_source_flags(full, args)
    check_preset_fits_model(full, args)
    check_preset_fits_data(full, args)
    check_phases(full, given, args, training_args)
    check_backbone_flags(full, args)  # before the data loads: the model is built after it
    if args.crop_size is not None and args.crop_size < 1:
        full.error(f"--crop_size must be >= 1, got {args.crop_size}.")
    if args.train_val_split is not None:
        try:
            fraction(str(args.train_val_split))
        except argparse.ArgumentTypeError as error:
            full.error(f"--train_val_split {error}")
    if args.config_overrides:
        try:
            parse_config_overrides(args.config_overrides, config_class(args))
        except ValueError as error:
            full.error(str(error))
    return args, training_args


def check_phases(
    parser: HfArgumentParser,
    given: argparse.Namespace,
    args: WeCLIPArguments,
    training_args: TrainingArguments,
) -> None:
    """--do_train / --do_eval as transformers' example scripts read them (``given``: None where left out): the run
    trains under --do_train and scores its model at the end under --do_eval (which `TrainingArguments` sets with an
    --eval_strategy too); --do_eval alone scores the saved model of --model_name_or_path, training nothing. Neither
    given, the run trains and scores its model where the data has a validation split, as before the flags counted.
    --do_predict (`WeCLIPTrainer.predict` is not supported), a run with nothing to do and flags that the run asked for
    would ignore are refused."""
    if training_args.do_predict:
        parser.error(
            "--do_predict: this script predicts no test split (WeCLIPTrainer.predict is not supported); score a split "
            "with masks with --do_eval, or segment images with the saved model (examples/segment.py)."
        )
    explicit = given.do_train is not None or given.do_eval is not None
    if not explicit:
        training_args.do_train, training_args.do_eval = True, args.validation_split != "none"
    args.evaluation_asked = explicit and training_args.do_eval
    if given.do_eval and args.validation_split == "none":
        parser.error(
            "--do_eval scores the model on --validation_split, and --validation_split none names no split: give "
            "one (or --train_val_split), or leave --do_eval out."
        )
    if training_args.do_train and args.model_name_or_path:
        parser.error(
            "--model_name_or_path is the saved model that --do_eval without --do_train scores; a run that trains "
            "builds its model from the backbones (--clip_model_name_or_path; examples/train.py --model_name_or_path "
            "continues a trained model)."
        )
    if training_args.do_train:
        return
    if not training_args.do_eval:
        parser.error(
            "--do_train and --do_eval are both off: nothing to do; give --do_train, --do_eval or both."
        )
    if not args.model_name_or_path:
        parser.error(
            "--do_eval without --do_train scores a saved model: give --model_name_or_path (e.g. the --output_dir of "
            "a finished run), or add --do_train to train one first."
        )
    ignored = [f"--{name}" for name in MODEL_FLAGS if getattr(args, name) is not None]
    # what only a training reads
    training_only = {
        "--resume_from_checkpoint": training_args.resume_from_checkpoint,
        "--push_to_hub": training_args.push_to_hub,
    }
    ignored += [flag for flag, value in training_only.items() if value]
    if ignored:
        parser.error(
            f"{ignored[0]} acts on a run that trains: --do_eval without --do_train scores the saved model of "
            "--model_name_or_path as it is; leave it out, or add --do_train."
        )


def config_class(args: WeCLIPArguments) -> type[WeCLIPConfig]:
    """The config class of the run's model: WeCLIP+'s with a DINOv2 or a WeCLIP+ preset (`model_from_backbones`)."""
    return WeCLIPPlusConfig if model_type_of_args(args) == "weclip_plus" else WeCLIPConfig
