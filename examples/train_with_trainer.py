#!/usr/bin/env python
"""Train WeCLIP with transformers' `Trainer`: the recipe of examples/train.py (crops, pseudo labels, optimizer,
schedule) in Trainer's loop, every `TrainingArguments` flag on the command line, for code built around Trainer
(callbacks, its checkpoints, its trackers).

    python examples/train_with_trainer.py                   # the offline toy world
    python examples/train_with_trainer.py --preset voc --dataset_name jxie/pascal-voc-2012 --output_dir weclip-voc
    python examples/train_with_trainer.py --data_dir my-data --class_names cat dog --max_steps 3000 \\
        --gradient_accumulation_steps 2 --eval_strategy steps --eval_steps 500 --save_steps 500 \\
        --load_best_model_at_end --metric_for_best_model miou --save_total_limit 2 --report_to tensorboard --bf16

The arguments are this script's (`WeCLIPArguments`: data and model) and `TrainingArguments`, parsed by
`HfArgumentParser` as transformers' run_semantic_segmentation.py. The `TrainingArguments` defaults are the recipe's
(`recipe_defaults`: that of --preset, else the toy world's without a dataset, else VOC's: voc-plus for WeCLIP+,
--dino_model_name_or_path): its batch, learning rate, weight decay, warm-up and steps, no gradient clipping
(``max_grad_norm=0``, as the official code), and its evaluations and checkpoints at the same points of the schedule
however long the run (--max_steps, or --num_train_epochs: as ratios of the run); a flag given replaces the recipe's
value. `WeCLIPTrainer` (`weclip_hf.trainer`) is `Trainer` with WeCLIP's collator, the official optimizer and
warm-up + linear schedule built from the `TrainingArguments`, and an evaluation that scores segmentations
(``eval_miou`` of the decoder, ``eval_cam_miou``, ``eval_pseudo_label_miou`` of the RFM pseudo labels).

`--resume_from_checkpoint` (a checkpoint-N folder, or 'latest': True as `Trainer.train` reads it) continues a run
exactly (Trainer restores the RNG and the data position; the model's step counter, which starts the RFM, is a saved
buffer): each checkpoint records the arguments that shape the training (training_args.json), and a resume that
changes one is refused, as is a checkpoint saved with --save_only_model (it holds no optimizer or schedule state to
continue); it records how the run computed too (computation.json: the device type, torch.compile, a CPU run's threads), and a resume that computes
otherwise is warned (its float sums run in another order), naming the flags of an exact resume.
Ctrl-C / SIGTERM during the training save a checkpoint of the step under way and stop the run (exit status 130 /
143), as examples/train.py, the complete script (streaming, several processes on a CPU, multi-scale evaluation,
overlays); in the end of the run (the final save, evaluation, card, push) they stop it at once, saying what is saved,
what is not, and how to finish it.

--do_train / --do_eval as in transformers' example scripts: --do_train trains, --do_eval scores the model at the end
(an --eval_strategy sets it too); --do_eval alone scores the saved model of --model_name_or_path without training
(eval_results.json in --output_dir). Neither given, the run trains and scores its model where the data has a
validation split. --do_predict is refused (no test-split predictions: examples/segment.py segments images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from torch.utils.data import Dataset
from transformers import (
    AutoModelForSemanticSegmentation,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    TrainingArguments,
    set_seed,
)
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from weclip_hf import WeCLIPConfig, WeCLIPImageProcessor, WeCLIPPlusConfig
from weclip_hf.batch_jobs import comparable_path
from weclip_hf.checkpointing import (
    CheckpointError,
    Computation,
    check_unchanged,
    existing_checkpoint_folder,
)
from weclip_hf.data.loading import (
    DataSource,
    LabelReading,
    dataset_classes_note,
    evaluation_set,
    load_dataset_splits,
    training_set,
)
from weclip_hf.data.toy import default_clip_model
from weclip_hf.data.transforms import TrainAugmentation
from weclip_hf.hub import describe_dataset, publish_folder
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.model_loading import load_clip_tokenizer
from weclip_hf.modeling_weclip_plus import model_from_backbones
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import (
    PRESETS,
    TrainingRecipe,
    get_preset,
    preset_config_kwargs,
    processor_size,
    with_class_names,
)
from weclip_hf.run_folder import TRAINER_CHECKPOINTS, claim_output_dir, remove_previous_run
from weclip_hf.run_signals import exit_status, explain_signals, stop_on_signals
from weclip_hf.script_arguments import (
    CLASS_NAMES_HELP,
    CONFIG_OVERRIDES_HELP,
    DATA_SOURCE_HELP,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    TRAIN_VAL_SPLIT_HELP,
    check_hub_token,
    check_one_data_source,
    check_preset_fits_data,
    check_preset_fits_model,
    check_source_flags,
    first_paragraph,
    fraction,
    model_type_of_args,
    naming_the_model_flag,
    parse_config_overrides,
    recipe_name,
    recipe_values,
)
from weclip_hf.trainer import (
    TRAINER_TERMS,
    RecordRunCallback,
    StopOnSignalCallback,
    WeCLIPTrainer,
    agreed_signal,
    recorded_computation,
    trainer_computation,
    trajectory_arguments,
)
from weclip_hf.training import check_fills_a_batch, schedule_notes
from weclip_hf.trajectory import computation_change_warning

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
# what a finished run writes besides its model, as transformers' example scripts (`Trainer.save_metrics`,
# `Trainer.save_state`); the first is written by every run, evaluated or not (`claim_output_dir`: a finished run)
FINAL_RESULTS = ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json")
# `WeCLIPArguments` a resumed run may change (they do not shape its training), and those that are local paths
RESUMABLE = (
    "validation_split", "toy_val_images", "overwrite_output_dir", "model_name_or_path", "evaluation_asked",
)  # fmt: skip
PATHS = ("data_dir", "dataset_path", "clip_model_name_or_path", "dino_model_name_or_path")
# `WeCLIPArguments` that build the model a run trains: a saved model (--model_name_or_path) is scored with its own
MODEL_FLAGS = (
    "clip_model_name_or_path", "dino_model_name_or_path", "class_names", "background_names", "rfm_start_step",
    "crop_size", "config_overrides",
)  # fmt: skip
# what the evaluations score: the decoder, the CAMs, the RFM pseudo labels
EVAL_MODES = ("pred", "cam", "pseudo")


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


def parse_args(argv=None) -> tuple[WeCLIPArguments, TrainingArguments]:
    """The script's arguments and `TrainingArguments`, the flags left out taking the recipe's values."""

    def parser(**kwargs) -> HfArgumentParser:
        return HfArgumentParser((WeCLIPArguments, TrainingArguments), **kwargs)

    # what the defaults depend on; num_train_epochs None unless given (in any spelling: --num-train-epochs, --num_tr)
    first = parser(add_help=False)
    first.set_defaults(num_train_epochs=None, do_train=None, do_eval=None)
    given, _ = first.parse_known_args(argv)
    flags = {str(token).split("=")[0] for token in (sys.argv[1:] if argv is None else argv)}
    recipe = get_preset(recipe_name(given)).training  # WeCLIP+'s VOC recipe with --dino_model_name_or_path
    max_steps = given.max_steps if given.max_steps > 0 else recipe.max_train_steps
    # Trainer counts epochs only without max_steps
    if given.num_train_epochs is not None and given.max_steps <= 0:
        max_steps = -1
    full = parser(description=first_paragraph(__doc__))
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


def resume_spec(value: str | None) -> str | None:
    """--resume_from_checkpoint as given, Trainer's booleans read as `Trainer.train` reads them: True (any case) as
    'latest', the newest checkpoint of --output_dir; False as no resume."""
    spelling = (value or "").lower()
    return "latest" if spelling == "true" else None if spelling == "false" else value


def config_class(args: WeCLIPArguments) -> type[WeCLIPConfig]:
    """The config class of the run's model: WeCLIP+'s with a DINOv2 or a WeCLIP+ preset (`model_from_backbones`)."""
    return WeCLIPPlusConfig if model_type_of_args(args) == "weclip_plus" else WeCLIPConfig


def trajectory(args: WeCLIPArguments, training_args: TrainingArguments) -> dict:
    """The arguments that shape the run's training (JSON values): what its checkpoints record and a resume repeats."""
    values = {k: v for k, v in dataclasses.asdict(args).items() if k not in RESUMABLE}
    values.update({k: comparable_path(values[k]) for k in PATHS if values[k]})
    return {**values, **trajectory_arguments(training_args)}


def missing_training_state(folder: Path) -> list[str]:
    """What a Trainer checkpoint lacks of the state an exact resume restores: "optimizer" (optimizer.pt, or its
    sharded or DeepSpeed folder) and "scheduler" (scheduler.pt); one saved with --save_only_model lacks both."""
    folders = [path.name for path in folder.iterdir() if path.is_dir()]
    # DeepSpeed keeps both in its global_step<N> folder
    deepspeed = any(name.startswith("global_step") for name in folders)
    optimizer = (
        deepspeed
        or any((folder / name).is_file() for name in (OPTIMIZER_NAME, OPTIMIZER_NAME_BIN))
        or any("optimizer" in name for name in folders)
    )
    scheduler = deepspeed or (folder / SCHEDULER_NAME).is_file()
    return [what for what, saved in (("optimizer", optimizer), ("scheduler", scheduler)) if not saved]


def checkpoint_to_resume(training_args: TrainingArguments) -> str | None:
    """The checkpoint of --resume_from_checkpoint ('latest': the newest checkpoint-N of --output_dir); a folder that
    does not exist, holds no Trainer checkpoint (its trainer_state.json), or no optimizer or scheduler state (saved
    with --save_only_model: the run would restart its warm-up and AdamW's moments) is refused."""
    spec, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    if spec is None:
        return None
    if spec != "latest":
        path = existing_checkpoint_folder(spec)
        if not (path / TRAINER_STATE_NAME).is_file():
            raise CheckpointError(
                f"{path} is no Trainer checkpoint (it holds no {TRAINER_STATE_NAME}): give a checkpoint-N folder "
                "of a train_with_trainer.py run, or 'latest'."
            )
    else:
        latest = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if latest is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: {output_dir} holds no checkpoint-N to resume from; leave the "
                "flag out to start a new run."
            )
        path = Path(latest)
    missing = missing_training_state(path)
    if missing:
        raise CheckpointError(
            f"{path} holds no {' or '.join(missing)} state ({OPTIMIZER_NAME}, {SCHEDULER_NAME}): it was saved with "
            "--save_only_model, and a run cannot be resumed from it exactly (its warm-up and AdamW's moments would "
            "start over). Resume from a checkpoint of a run without --save_only_model, or leave "
            "--resume_from_checkpoint out to start a new run."
        )
    return str(path)


def check_resume(path: Path, recorded: dict, computation: Computation) -> None:
    """Refuse to resume from checkpoint ``path`` a run whose arguments that shape the training (``recorded``,
    `trajectory`) differ from its run's, naming each; warn, not refuse, a run that computes otherwise
    (``computation``: another device type, torch.compile, CPU threads), whose float sums then run in another order
    (`computation_change_warning` in the Trainer's flags). A checkpoint of an earlier version records neither, or no
    computation: what it lacks is not compared."""
    label = lambda key: "processes (world_size)" if key == "world_size" else f"--{key}"  # noqa: E731
    if not check_unchanged(path, recorded, label=label):
        print(f"Note: {path} records no training arguments: they cannot be checked.")
    warning = computation_change_warning(path, recorded_computation(path), computation, TRAINER_TERMS)
    if warning:
        print(warning)


def data_source(args: WeCLIPArguments, training_args: TrainingArguments) -> DataSource:
    """The run's data (the toy world of --toy_train_images / --toy_val_images without a dataset), seeded by --seed."""
    toy_sizes = (args.toy_train_images, args.toy_val_images)
    return dataclasses.replace(DataSource.from_args(args, toy_sizes), seed=training_args.seed)


def label_reading(args: WeCLIPArguments, cfg: WeCLIPConfig, skip_empty: bool) -> LabelReading:
    """How the images' labels are read: the data flags, the model's classes (which a column of names maps through),
    ``skip_empty`` (the preset's: COCO's skips the images outside the official lists)."""
    reading = LabelReading.from_args(args, class_names=list(zip(cfg.label_names, cfg.class_names)))
    return dataclasses.replace(reading, skip_empty=skip_empty)


def scored_set(
    val_raw, cfg: WeCLIPConfig, processor: WeCLIPImageProcessor, reading: LabelReading, labelling
) -> Dataset:
    """The validation split as the evaluation scores it: images with their masks, normalized as ``processor``."""
    normalization = PixelNormalization.from_image_processor(processor)
    dataset, _ = evaluation_set(
        val_raw,
        cfg.num_foreground_classes,
        cfg.semantic_loss_ignore_index,
        normalization,
        reading,
        labelling=labelling,
    )
    return dataset


def no_validation_split(flag: str) -> ValueError:
    """The error of a run asked to score its model (``flag``) on data without a validation split."""
    return ValueError(
        f"{flag} scores the model, but the dataset has no validation split: name one (--validation_split), or "
        f"hold one out (--train_val_split), or {'leave it out' if flag == '--do_eval' else 'give --eval_strategy no'}."
    )


def evaluate_saved_model(args: WeCLIPArguments, training_args: TrainingArguments) -> dict:
    """--do_eval without --do_train: the mIoU of the saved model of --model_name_or_path on the validation split (its
    own classes and image processor; the evaluation settings of the preset it was trained with, else --preset's),
    written to --output_dir as transformers' example scripts write it (eval_results.json, and all_results.json
    updated); nothing is trained, and the folder is not claimed as a run's."""
    with naming_the_model_flag(args.model_name_or_path):
        model = AutoModelForSemanticSegmentation.from_pretrained(args.model_name_or_path)
    cfg = model.config
    processor = WeCLIPImageProcessor.from_saved_or_default(args.model_name_or_path, **processor_settings(cfg))
    preset = get_preset(recipe_name(args))  # the saved model's training_preset, else as a run's
    _, val_raw, _ = load_dataset_splits(
        data_source(args, training_args),
        train_split=args.train_split,
        validation_split=args.validation_split,
        preset=args.preset,
        need_train=False,
        train_val_split=args.train_val_split,
        labels_column=args.labels_column,
        dataset_classes=False,  # the model's classes
    )
    if val_raw is None:
        raise no_validation_split("--do_eval")
    reading = label_reading(args, cfg, preset.dataset.skip_empty_images)
    val_set = scored_set(val_raw, cfg, processor, reading, training_args.main_process_first)
    trainer = WeCLIPTrainer(
        model,
        training_args,
        eval_dataset=val_set,
        processing_class=processor,
        eval_modes=EVAL_MODES,
        eval_long_side=preset.evaluation.eval_long_side,
    )
    results = trainer.evaluate()
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    trainer.save_metrics("eval", results)
    if trainer.is_world_process_zero():
        print(json.dumps(results, indent=2))
    return results


@dataclass
class RunEnd:
    """What the end of a trained run (``step`` steps in ``output_dir``) has written so far (``done`` of ``parts``, in
    their order), for the message of a signal that stops it there; ``results``: its final evaluation's."""

    output_dir: Path
    step: int
    overwrite: bool  # --overwrite_output_dir: a resume leaves it out
    parts: list[str]
    done: int = 0
    results: dict = field(default_factory=dict)

    def message(self, signum: int) -> str:
        """What is saved, what is not, and how to finish the run: resume its last checkpoint, score its model."""
        saved, missing = self.parts[: self.done], self.parts[self.done :]
        held = f"saved in {self.output_dir}: {', '.join(saved)}" if saved else "nothing of its end is saved"
        text = f"stopped by signal {signum} after the training (step {self.step}): {held}; not done: "
        text += f"{', '.join(missing)}."
        checkpoint = get_last_checkpoint(str(self.output_dir)) if self.output_dir.is_dir() else None
        if checkpoint:
            steps = int(checkpoint.rsplit("-", 1)[-1])
            # a checkpoint of the last step trains nothing again
            again = "no step" if steps == self.step else f"steps {steps + 1}-{self.step}"
            without = " without --overwrite_output_dir" if self.overwrite else ""
            text += (
                f" Finish it: the same command{without} with --resume_from_checkpoint latest (from "
                f"{Path(checkpoint).name} it trains {again} again, then runs this end whole)."
            )
        if saved and any(part.startswith(FINAL_EVALUATION) for part in missing):
            text += (
                f" Score the saved model: the same data flags with --do_eval --model_name_or_path {self.output_dir} "
                f"--output_dir {self.output_dir}."
            )
        if not checkpoint and not saved:
            text += " No checkpoint was saved (--save_strategy no): only a new run trains the model again."
        return text


# the final evaluation's part of `run_end_parts`
FINAL_EVALUATION = "the final evaluation"


def run_end_parts(training_args: TrainingArguments, evaluate: bool) -> list[str]:
    """What the end of a trained run writes, in order (`finish_run`): ``evaluate``: a final evaluation."""
    parts = [
        "the trained model (model.safetensors, config.json, preprocessor_config.json)",
        "train_results.json and trainer_state.json",
        "the CLIP tokenizer of its text embeddings",
    ]
    if evaluate:
        parts.append(f"{FINAL_EVALUATION} (eval_results.json, all_results.json)")
    parts.append("the model card (README.md)")
    if training_args.push_to_hub:
        parts.append(f"the push to {training_args.hub_model_id or 'the Hub'}")
    return parts


def finish_run(
    args: WeCLIPArguments,
    training_args: TrainingArguments,
    trainer: WeCLIPTrainer,
    tokenizer: PreTrainedTokenizerBase,
    train_metrics: dict,
    end: RunEnd,
) -> None:
    """The end of a trained run: save the model, its training figures and log, its tokenizer; score it; its card and
    push; each part counted in ``end`` once written (``end.results``: the evaluation's figures)."""
    output_dir = end.output_dir
    # saved before the evaluation (which casts it with --fp16_full_eval), not pushed (as save_model does with
    # --push_to_hub): the push below publishes it with the card and figures of that evaluation
    trainer.save_model(training_args.output_dir, _internal_call=True)
    end.done += 1
    # as transformers' example scripts: train_results.json, and trainer_state.json with the whole log history
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    end.done += 1
    # beside the model: new class names need it (the checkpoints, which resume the run, go without)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    end.done += 1
    if trainer.eval_dataset is not None:
        results = trainer.evaluate()  # the model as saved (with load_best_model_at_end, the best one)
        results["train_seconds"] = train_metrics["train_runtime"]
        # eval_results.json, and all_results.json with the training's
        trainer.save_metrics("eval", results)
        if trainer.is_world_process_zero():
            print(json.dumps(results, indent=2))
        end.results = results
        end.done += 1
    # README.md, with these figures, on the data named as train.py's card names it
    trainer.create_model_card(
        dataset=args.dataset_name,
        dataset_description=describe_dataset(args.dataset_name, args.data_dir or args.dataset_path),
    )
    end.done += 1
    if training_args.push_to_hub and trainer.is_world_process_zero():
        # one commit of the allowed files (`publishable_files`): the model, its tokenizer, card, figures
        publish_folder(
            output_dir,
            trainer.hub_model_id,  # the full id of the repository the trainer created
            token=training_args.hub_token,
            revision=training_args.hub_revision,
            commit_message="End of training",
        )


def main(argv=None) -> dict:
    """Train as the command line ``argv`` says, save the model, its processor and the CLIP tokenizer of its text
    embeddings, return the validation mIoU; with --do_eval alone, score a saved model (`evaluate_saved_model`)."""
    args, training_args = parse_args(argv)
    if not training_args.do_train:
        return evaluate_saved_model(args, training_args)
    output_dir = Path(training_args.output_dir)
    resume = checkpoint_to_resume(training_args)
    previous_run = claim_output_dir(
        output_dir,
        training_args.resume_from_checkpoint,
        args.overwrite_output_dir,
        TRAINER_CHECKPOINTS,
        tracker_dirs=("runs",),  # TensorBoardCallback's events: <output_dir>/runs/<time>_<host>
        results=FINAL_RESULTS,
    )
    recorded = trajectory(args, training_args)
    computation = trainer_computation(training_args)
    if resume:
        check_resume(Path(resume), recorded, computation)

    # data and model
    source = data_source(args, training_args)
    preset = get_preset(recipe_name(args))  # the recipe of parse_args
    set_seed(training_args.seed)  # the decoder's initial weights
    train_raw, val_raw, names = load_dataset_splits(
        source,
        train_split=args.train_split,
        validation_split=args.validation_split,
        preset=args.preset,
        train_val_split=args.train_val_split,
        labels_column=args.labels_column,
        dataset_classes=not args.class_names,
    )
    if "class_names" in names and not (args.preset or args.class_names or source.toy):
        print(dataset_classes_note(names["class_names"]))
    if val_raw is None and training_args.eval_strategy != "no":
        raise no_validation_split(
            f"--eval_strategy {training_args.eval_strategy.value} (the recipe's or given)"
        )
    if val_raw is None and args.evaluation_asked:
        raise no_validation_split("--do_eval")
    if not training_args.do_eval:  # --do_train alone: no final evaluation
        val_raw = None
    # the config of examples/train.py
    config_kwargs = preset_config_kwargs(args.preset or ("toy" if source.toy else None))
    config_kwargs.update({k: v for k, v in names.items() if v is not None})
    config_kwargs = with_class_names(config_kwargs, args.class_names)
    if args.background_names:
        config_kwargs["background_names"] = args.background_names
    if args.rfm_start_step is not None:
        config_kwargs["rfm_start_step"] = args.rfm_start_step
    if args.config_overrides:
        config_kwargs.update(parse_config_overrides(args.config_overrides, config_class(args)))
    clip = args.clip_model_name_or_path or default_clip_model(toy=preset.name == "toy")
    plus = model_type_of_args(args) == "weclip_plus"
    # the tokenizer of the text embeddings, loaded once: the model's are computed with it, and it is saved with it
    tokenizer = load_clip_tokenizer(clip, "--clip_model_name_or_path")
    model = model_from_backbones(
        clip, args.dino_model_name_or_path, plus, tokenizer=tokenizer, **config_kwargs
    )
    cfg = model.config
    cfg.training_preset = preset.name  # its evaluation settings are the model's (evaluate.py, segment.py)
    if training_args.max_steps > 0:  # when the RFM (and WeCLIP+'s self-training) act, if not in this run
        for note in schedule_notes(cfg, 0, training_args.max_steps, "--rfm_start_step, or --preset, sets it"):
            print(f"Note: {note}")
    recipe = preset.training
    if args.crop_size is not None:
        recipe = dataclasses.replace(recipe, crop_size=args.crop_size)
    processor = WeCLIPImageProcessor(
        size=processor_size(preset.evaluation.eval_long_side, recipe.crop_size),
        **processor_settings(cfg),
    )
    normalization = PixelNormalization.from_image_processor(processor)
    reading = label_reading(args, cfg, preset.dataset.skip_empty_images)
    # one process reads the images for the labels
    labelling = training_args.main_process_first
    augment = TrainAugmentation(
        recipe.crop_size,
        (recipe.scale_min, recipe.scale_max),
        ignore_index=cfg.semantic_loss_ignore_index,  # --config_overrides may set it (-100: > 254 classes)
        normalization=normalization,
    )
    # the crops and flips seeded as examples/train.py's
    train_set, summary = training_set(
        train_raw, cfg.num_foreground_classes, augment, reading, seed=training_args.seed, labelling=labelling
    )
    print(f"train: {summary}")
    # whole batches (the recipe's): a smaller set trained no step, then saved and scored its model as trained
    if training_args.dataloader_drop_last:
        check_fills_a_batch(
            len(train_set), training_args.per_device_train_batch_size, training_args.world_size
        )
    val_set = None if val_raw is None else scored_set(val_raw, cfg, processor, reading, labelling)

    # training; Ctrl-C / SIGTERM within it end the step under way and save its checkpoint
    stop_on_signal = StopOnSignalCallback({"signal": None})
    trainer = WeCLIPTrainer(
        model,
        training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=processor,  # saved with the model and in every checkpoint
        # training_args.json and computation.json in every checkpoint (written by on_save: the signal's one too)
        callbacks=[RecordRunCallback(recorded, computation), stop_on_signal],
        eval_modes=EVAL_MODES,
        eval_long_side=preset.evaluation.eval_long_side,
    )
    if (
        previous_run and PartialState().is_main_process
    ):  # --overwrite_output_dir, once the data and model load
        remove_previous_run(previous_run)
    with stop_on_signals() as stop:  # leaving it, Ctrl-C / SIGTERM act at once again
        stop_on_signal.stop = stop
        train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    signum, step = stop_on_signal.signal, trainer.state.global_step
    if signum:
        if trainer.is_world_process_zero():
            print(
                f"stopped by signal {signum} at step {step}; checkpoint saved to {output_dir / f'checkpoint-{step}'}"
                ": continue the run with --resume_from_checkpoint latest (its model is saved and scored when it ends)"
            )
        return {"stopped_at": step, "stopped_by_signal": signum}
    # the end of the run: a signal now stops it at once, saying what is saved and what is not
    end = RunEnd(
        output_dir, step, args.overwrite_output_dir, run_end_parts(training_args, val_set is not None)
    )
    log = print if trainer.is_world_process_zero() else lambda message: None
    with explain_signals(end.message, log):
        # one that came after the last step (in Trainer's last save), in any process: every process stops
        late = agreed_signal(stop["signal"] or 0, training_args)
        if late:
            signal.raise_signal(late)
        finish_run(args, training_args, trainer, tokenizer, train_metrics, end)
    return end.results


if __name__ == "__main__":
    # 128 + the signal's number for a run a signal stopped (its checkpoint saved), as a killed process
    raise SystemExit(exit_status(main()))
