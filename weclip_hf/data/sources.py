"""Where a script's splits come from (`DataSource`: a Hub dataset, a local folder, a saved DatasetDict or the toy
world): the splits loaded and checked (`load_dataset_splits`), a validation split held out where the dataset has
none, and the class names a dataset implies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..batch_jobs import check_finished
from ..presets import Preset, get_preset
from ..wording import counted
from .columns import LABEL_COLUMNS, MASK_COLUMNS, class_label_columns, column_feature, is_streaming
from .decoding import split_name
from .folders import check_imagefolder_metadata, check_local_dataset, check_saved_splits, load_folder_dataset
from .label_rows import class_label_feature, lookup_key

# the flags (and DataSource fields) that name a dataset; a script given none of them uses the toy world
DATA_SOURCE_FLAGS = ("dataset_name", "data_dir", "dataset_path")
# the config fields a dataset's names set for a fresh model (`load_dataset_splits`), over its preset's
DATASET_NAME_FIELDS = ("class_names", "label_names", "background_names", "prompt_template")


def names_no_dataset(args) -> bool:
    """True when none of a script's parsed data-source flags names a dataset: the scripts then use the toy world."""
    return not any(getattr(args, flag, None) for flag in DATA_SOURCE_FLAGS)


@dataclass(frozen=True)
class DataSource:
    """Where a script's data comes from: a Hub dataset, an imagefolder, a saved DatasetDict, or the toy world.

    ``streaming``: stream Hub datasets and imagefolders, and read the training split of a saved DatasetDict as a
    ``datasets.IterableDataset``. ``toy_sizes``: the toy world's (train, validation) images, each None for the toy
    preset's (the scripts' --toy_train_images / --toy_val_images left out; a validation split named "train" is the
    first training images); ``seed``: the toy world's seed.
    """

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    data_dir: str | None = None
    dataset_path: str | None = None
    streaming: bool = False
    toy: bool = False
    toy_sizes: tuple[int | None, int | None] | None = None
    seed: int = 0

    @classmethod
    def from_args(cls, args, toy_sizes: tuple[int | None, int | None] | None = None) -> DataSource:
        """The source named by a script's parsed data-source flags (`add_data_source_flags`, --dataset_config_name,
        and --streaming and --seed where the script has them): the toy world when no dataset is named."""
        names = {flag: getattr(args, flag, None) for flag in DATA_SOURCE_FLAGS}
        return cls(
            dataset_config_name=getattr(args, "dataset_config_name", None),
            streaming=getattr(args, "streaming", False),
            toy=names_no_dataset(args),
            toy_sizes=toy_sizes,
            seed=getattr(args, "seed", 0),
            **names,
        )

    @property
    def name(self) -> str | None:
        """The dataset as messages name it: its path, folder or Hub id (None for the toy world)."""
        return self.dataset_path or self.data_dir or self.dataset_name


def check_split_names(
    available: list[str], train_split: str | None, validation_split: str | None, training: bool = True
) -> None:
    """Refuse a training split (None: none needed) or validation split (None: the preset's; "none": no evaluation,
    while ``training`` only: an evaluation needs one) that is not among the dataset's ``available`` splits: a
    misspelt name would mean no evaluation, or for the toy world the flag ignored, without a word."""
    if train_split is not None and train_split not in available:
        raise ValueError(f"Split {train_split!r} not found; available splits: {available}.")
    if validation_split not in (None, "none" if training else None) and validation_split not in available:
        none = " ('none': no evaluation)" if training else ""
        raise ValueError(
            f"Validation split {validation_split!r} not found; available splits: {available}{none}."
        )


def load_dataset_splits(
    source: DataSource,
    *,
    train_split: str | None = None,
    validation_split: str | None = None,
    preset: str | None = None,
    need_train: bool = True,
    train_val_split: float | None = None,
    labels_column: str | None = None,
    dataset_classes: bool = True,
    log: Callable[[str], None] = print,
):
    """(train, validation or None, names) of a `DataSource`; ``names`` holds the class/background names (and
    prompt template) they imply.

    Without a ``preset``, ``names`` holds the class names of the dataset's classification label column
    (`class_label_names`; ``labels_column`` where given), as transformers' example scripts take id2label from it;
    ``dataset_classes=False``: not read (a run whose classes are given, or are its model's).

    ``train_val_split``: where the dataset lacks the validation split (and it is not "none"), that fraction of the
    training split is held out as it (`hold_out_validation`, seeded by ``source.seed``), with a note through ``log``.

    Without ``train_split`` the preset's preferred splits are tried in order (VOC: "train_aug", then
    "train", with a note through ``log``). With ``need_train=False`` (evaluation) a missing training split gives
    ``train=None``. A ``validation_split`` given must exist ("none": no validation set, when training only: an
    evaluation refuses it); without it the preset's is used when the dataset has it.
    """
    if source.toy:
        from .toy import TOY_VALIDATION_SEED_OFFSET, make_toy_dataset

        check_split_names(
            ["train", "validation"], train_split if need_train else None, validation_split, need_train
        )
        default_sizes = get_preset("toy").dataset.toy_sizes
        toy_sizes = [
            default if size is None else size
            for size, default in zip(source.toy_sizes or (None, None), default_sizes)
        ]
        train = with_split_name(make_toy_dataset(toy_sizes[0], seed=source.seed), "train")
        val = None
        if validation_split != "none":  # "train": the first training images (a training-set score)
            name = validation_split or "validation"
            seed = source.seed + (0 if name == "train" else TOY_VALIDATION_SEED_OFFSET)
            val = with_split_name(make_toy_dataset(toy_sizes[1], seed=seed), name)
        names = _names(get_preset("toy"))
        if source.streaming:
            train = with_split_name(train.to_iterable_dataset(num_shards=min(len(train), 64)), "train")
        return train, val, names
    import datasets

    if source.dataset_path:
        check_local_dataset(source.dataset_path, "--dataset_path")
        check_saved_splits(source.dataset_path)
        ds = datasets.load_from_disk(source.dataset_path)
    elif source.data_dir:
        check_local_dataset(source.data_dir, "--data_dir")
        check_finished(source.data_dir, "--data_dir")  # an interrupted generate_pseudo_labels.py
        check_imagefolder_metadata(source.data_dir)
        ds = load_folder_dataset("imagefolder", source.streaming, data_dir=source.data_dir)
    elif source.dataset_name:
        # a local folder, which `datasets` reads as a repository
        if Path(source.dataset_name).expanduser().is_dir():
            check_imagefolder_metadata(source.dataset_name, "--dataset_name")
        ds = load_folder_dataset(source.dataset_name, source.streaming, name=source.dataset_config_name)
    else:
        raise ValueError("Give a dataset_name, data_dir or dataset_path (or toy=True).")
    layout = get_preset(preset or "voc").dataset
    if train_split is None:
        preferred = layout.train_splits
        train_split = next((s for s in preferred if s in ds), preferred[-1])
        if preset and need_train and train_split != preferred[0] and train_split in ds:  # a note for training
            size = counted(len(ds[train_split]), "image") if not is_streaming(ds[train_split]) else "streamed"
            log(
                f"Note: the dataset has no {preferred[0]!r} split (the --preset {preset} recipe trains on it; VOC: "
                f"the SBD-augmented 10,582 images); training on {train_split!r} ({size}; VOC 2012 'train' alone "
                "has 1,464). Pass --train_split to choose another."
            )
    # the default validation split, which --train_val_split holds out of the training split, need not exist; a split
    # named otherwise must (a mistyped --validation_split would be held out under that name)
    held_out = train_val_split and validation_split in (None, layout.validation_split)
    check_split_names(
        list(ds), train_split if need_train else None, None if held_out else validation_split, need_train
    )
    validation_split = validation_split or layout.validation_split
    names = _names(get_preset(preset)) if preset else {}
    train = with_split_name(ds[train_split], train_split) if train_split in ds else None
    val = with_split_name(ds[validation_split], validation_split) if validation_split in ds else None
    if train_val_split and train is not None and val is None and validation_split != "none":
        train, val = hold_out_validation(train, train_val_split, source.seed, validation_split)
        log(
            f"Note: the dataset has no {validation_split!r} split: --train_val_split {train_val_split} holds out "
            f"{len(val)} of the {counted(len(train) + len(val), 'image')} of {train_split!r} for it (drawn by seed "
            f"{source.seed}); training on the other {len(train)}."
        )
    if train_val_split and validation_split in ds:  # transformers' rule: the dataset's own split wins
        log(
            f"Note: --train_val_split {train_val_split} holds out nothing: the dataset has its own "
            f"{validation_split!r} split, which is scored."
        )
    # before train.py's "no evaluation": what would give one
    if val is None and validation_split != "none" and need_train:
        others = [name for name in ds if name != train_split]
        log(
            f"Note: the dataset has no {validation_split!r} split; "
            + (
                f"its other splits ({', '.join(map(repr, others))}) can be scored: --validation_split NAME."
                if others
                else f"--train_val_split holds out a share of {train_split!r} for one."
            )
        )
    if source.streaming and train is not None and not is_streaming(train):
        train = with_split_name(train.to_iterable_dataset(num_shards=min(len(train), 64)), train_split)
    for split in (train, val):
        check_not_empty(split, source.name)
    if not preset and dataset_classes:
        classes = class_label_names(train if train is not None else val, labels_column)
        names = {"class_names": classes} if classes else names
    return train, val, names


def class_label_names(dataset, labels_column: str | None = None) -> list[str] | None:
    """The class names of a split's image-level label column when it is a classification label (`datasets.ClassLabel`
    or a list of them), in its order; None otherwise. The column is ``labels_column`` (a struct column's field
    named with a dot too: ``objects.category``), else the one the data pipeline picks (`resolve_columns`: the first
    of `LABEL_COLUMNS`, then of `class_label_columns` where the split has no mask column: beside masks, such a
    column may describe something else, e.g. a scene). Names that include the background are refused, naming the
    column: WeCLIP's classes are the foreground ones."""
    features = getattr(dataset, "features", None) or {}
    class_labels = class_label_columns(features)
    has_masks = any(c in features and c not in class_labels for c in MASK_COLUMNS)
    # beside masks, a ClassLabel column not named as labels is no image's classes (scene_parse_150's scene_category)
    candidates = [labels_column] if labels_column else [*LABEL_COLUMNS, *([] if has_masks else class_labels)]
    column = next((c for c in candidates if column_feature(features, c) is not None), None)
    class_label = class_label_feature(column_feature(features, column))
    if class_label is None:
        return None
    background = [name for name in class_label.names if lookup_key(name).strip("_") == "background"]
    if background:
        raise ValueError(
            f"The classes of the dataset's label column {column!r} name {background[0]!r}: WeCLIP's classes are the "
            "foreground ones (its background comes from its background prompts, --background_names), so the run's "
            "classes cannot be this column's. Give --class_names without it (classes 1..C, in the masks' id order), "
            "with --labels_column none to read the image-level labels from the masks."
        )
    return list(class_label.names)


def dataset_classes_note(names: list[str]) -> str:
    """The note of a run whose classes are its dataset's `class_label_names` (no --class_names, no --preset)."""
    shown = names if len(names) <= 12 else [*names[:12], f"... {len(names)} in all"]
    return (
        f"Note: the classes are the names of the dataset's label column (a ClassLabel): {shown}. --class_names or "
        "--preset choose others."
    )


def hold_out_validation(train, fraction: float, seed: int, name: str = "validation"):
    """(train, validation): ``fraction`` of the rows of a training split held out as a validation split named
    ``name`` (transformers' --train_val_split), drawn by ``seed``: the same rows on every run and resume of that
    seed. A stream cannot be divided so: refused, saying what to do."""
    if is_streaming(train):
        raise ValueError(
            "--train_val_split holds out rows of a training split read whole, not streamed: give the dataset a "
            "validation split (--validation_split), or drop --streaming."
        )
    parts = train.train_test_split(test_size=fraction, seed=seed)
    return with_split_name(parts["train"], split_name(train) or "train"), with_split_name(
        parts["test"], name, replace=True
    )


def check_not_empty(split, source: str | None) -> None:
    """Refuse a loaded split without any example (training or evaluation would fail later, far from the cause)."""
    if split is None or is_streaming(split) or len(split) > 0:
        return
    name = split_name(split)
    raise ValueError(f"Split {name!r} of {source} is empty: it has no examples.")


def _names(preset: Preset) -> dict:
    """The names a dataset implies: its preset's class names, display names, background words, prompt."""
    kwargs = preset.config_kwargs()
    return {k: kwargs[k] for k in DATASET_NAME_FIELDS if k in kwargs}


def with_split_name(dataset, name: str, replace: bool = False):
    """``dataset`` knowing the name of its split (messages name it: "row 3 of split 'train'"). ``datasets``
    records it for Hub and imagefolder splits, not for ``load_from_disk``, in-memory data or streams made with
    ``to_iterable_dataset``; ``replace``: also over the one it has (rows held out of another split)."""
    import datasets

    if (replace or getattr(dataset, "split", None) is None) and hasattr(dataset, "_split"):
        dataset._split = datasets.NamedSplit(name)  # no public setter; the attribute both dataset types share
    return dataset
