"""The data flags: the help texts of the dataset's flags (source, configuration, columns, classes, held-out
split), the mutually exclusive data-source flags (`add_data_source_flags`, `check_one_data_source`), the toy
world's sizes (`add_toy_size_flags`) and the check of the flags a data source leaves unread
(`check_source_flags`)."""

from __future__ import annotations

import argparse

from ..data.columns import FROM_MASKS, IMAGE_COLUMNS, MASK_COLUMNS
from ..data.sources import DATA_SOURCE_FLAGS, names_no_dataset
from ..presets import get_preset
from .value_types import at_least_one

# --help texts of flags several scripts share
DATA_SOURCE_HELP = {
    "dataset_name": "Hub dataset id",
    "data_dir": "local imagefolder dataset (images + masks + metadata.jsonl)",
    "dataset_path": "a dataset saved with DatasetDict.save_to_disk",
}
DATASET_CONFIG_HELP = "configuration of the --dataset_name dataset (load_dataset's name; default: none)"
IMAGE_COLUMN_HELP = f"the image column (default: the first of {', '.join(IMAGE_COLUMNS)} the dataset has)"
MASK_COLUMN_HELP = f"the mask column (default: the first of {', '.join(MASK_COLUMNS)} the dataset has)"
LABELS_COLUMN_HELP = (
    "image-level labels: ids 1..C (0..C-1 with --labels_zero_based), multi-hot rows, or class names; a field of a "
    f"struct column as objects.category; '{FROM_MASKS}': the labels from the masks (default: a label column found by "
    "name, else the masks)"
)
CLASS_NAMES_HELP = (
    "the foreground classes, one CLIP prompt name each; they are also the display names (config.id2label), "
    "replacing a preset's (edit id2label in the saved config.json to show others)"
)


TRAIN_VAL_SPLIT_HELP = (
    "a dataset without the validation split: hold this fraction of the training split out for validation (e.g. "
    "0.15, transformers' --train_val_split; default: none held out, no evaluation). The rows are drawn by --seed: "
    "the same on every run and resume of that seed"
)


def add_data_source_flags(group, **help_texts: str) -> None:
    """Add --dataset_name, --data_dir and --dataset_path to ``group`` as mutually exclusive flags (argparse
    then refuses two of them, naming both); ``help_texts``: the help of each, by flag name (default:
    `DATA_SOURCE_HELP`'s)."""
    exclusive = group.add_mutually_exclusive_group()
    for flag in DATA_SOURCE_FLAGS:
        exclusive.add_argument(f"--{flag}", help=help_texts.get(flag, DATA_SOURCE_HELP[flag]))


def check_one_data_source(parser: argparse.ArgumentParser, args) -> None:
    """Refuse two data-source flags, as `add_data_source_flags`' exclusive group does, for a script whose flags come
    from a dataclass (`HfArgumentParser`)."""
    given = [f"--{flag}" for flag in DATA_SOURCE_FLAGS if getattr(args, flag, None)]
    if len(given) > 1:
        parser.error(f"{' and '.join(given)} each name a dataset: give one of them.")


TOY_FLAGS = ("toy_train_images", "toy_val_images")  # the toy world's sizes (train.py, train_with_trainer.py)


def add_toy_size_flags(group, images_of: str = "training images", aliases: tuple[str, ...] = ()) -> None:
    """Add --toy_train_images (also named ``aliases``) and --toy_val_images to ``group``: the toy world's sizes,
    by default the toy preset's (`check_source_flags` refuses them with a dataset)."""
    train, val = get_preset("toy").dataset.toy_sizes
    group.add_argument(
        "--toy_train_images", *aliases, type=at_least_one, help=f"toy world: {images_of} ({train})"
    )
    group.add_argument("--toy_val_images", type=at_least_one, help=f"toy world: validation images ({val})")


def check_source_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the flags that the data source named would leave unread: a toy world's size below 1, or given with a
    dataset (which replaces the toy world), and --dataset_config_name without --dataset_name (a folder, a saved
    dataset, image files and the toy world have no configurations)."""
    given = [flag for flag in TOY_FLAGS if getattr(args, flag, None) is not None]
    for flag in given:
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag}: must be >= 1, got {getattr(args, flag)}")  # as `at_least_one`
    source = next((f"--{flag}" for flag in (*DATA_SOURCE_FLAGS, "images") if getattr(args, flag, None)), None)
    if given and not names_no_dataset(args):
        parser.error(f"--{given[0]} sizes the toy world, which {source} replaces: leave it out.")
    if getattr(args, "dataset_config_name", None) and not getattr(args, "dataset_name", None):
        read = f"{source} is read" if source else "the offline toy world is used"
        parser.error(
            f"--dataset_config_name chooses a configuration of a --dataset_name dataset, and {read} without one: "
            "leave it out."
        )
