"""The data of examples/train_with_trainer.py: its source, how its labels are read, and the validation split
as the evaluation scores it.
"""

from __future__ import annotations

import dataclasses

from torch.utils.data import Dataset
from transformers import TrainingArguments

from trainer_run.arguments import WeCLIPArguments
from weclip_hf import WeCLIPConfig, WeCLIPImageProcessor
from weclip_hf.data.labelled_sets import LabelReading, evaluation_set
from weclip_hf.data.sources import DataSource
from weclip_hf.normalization import PixelNormalization


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
