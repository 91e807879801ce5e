"""What examples/train_with_trainer.py's evaluations score, and --do_eval without --do_train: the
saved model of --model_name_or_path scored, nothing trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForSemanticSegmentation, TrainingArguments

from trainer_run.arguments import WeCLIPArguments
from trainer_run.data import data_source, label_reading, no_validation_split, scored_set
from weclip_hf import WeCLIPImageProcessor
from weclip_hf.data.sources import load_dataset_splits
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.presets import get_preset
from weclip_hf.script_arguments import naming_the_model_flag, recipe_name
from weclip_hf.trainer import WeCLIPTrainer

# what the evaluations score: the decoder, the CAMs, the RFM pseudo labels
EVAL_MODES = ("pred", "cam", "pseudo")


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
