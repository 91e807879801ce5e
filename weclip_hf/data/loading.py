"""From a dataset (Hub, local folder, or the toy world) to PyTorch datasets of WeCLIP batches."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, Subset, get_worker_info

from ..batch_jobs import check_finished, group_by_size, process_share
from ..image_reading import to_rgb_uint8
from ..normalization import PixelNormalization
from ..presets import Preset, get_preset
from ..wording import counted
from .columns import (
    FROM_MASKS,
    LABEL_COLUMNS,
    MASK_COLUMNS,
    Columns,
    class_label_columns,
    column_feature,
    dataset_columns,
    is_streaming,
    resolve_columns,
    struct_fields,
)
from .decoding import UnreadableImageError, decode_image, describe, split_name, undecoded
from .image_labels import LabelSummary, add_image_labels, no_class_cause, streamed_no_class_cause
from .label_rows import class_label_feature, lookup_key
from .masks import checked_mask, mask_array
from .transforms import TrainAugmentation, mask_dtype, multi_hot, normalize


def read_example(
    example: dict,
    columns: Columns,
    row: str,
    features=None,
    num_classes: int | None = None,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (uint8 [H, W, 3]) and mask ([H, W] array of ids, or None) of an example; an unreadable file
    raises `UnreadableImageError` naming it (``row`` where it has no path). ``features``: the dataset's (modes).
    With ``num_classes``, the mask is refused unless it has ids 0..C or ``ignore_index`` and its image's size
    (`checked_mask`, as `add_image_labels` checks a split ahead: here also a stream's, whose images are not read
    ahead; the `mask_dtype` cast of training masks relies on it)."""
    features = features or {}
    image = decode_image(example[columns.image], columns.image, row, features.get(columns.image))
    mask = None
    if columns.mask is not None and example.get(columns.mask) is not None:
        mask = decode_image(example[columns.mask], columns.mask, row, features.get(columns.mask))
        if num_classes is None:
            mask = mask_array(mask, describe(example[columns.mask], columns.mask, row))
        else:
            mask = checked_mask(example, columns, image, mask, row, num_classes, ignore_index)
    return to_rgb_uint8(image), mask


def train_item(
    example: dict,
    columns: Columns,
    num_classes: int,
    augment: TrainAugmentation,
    rng: np.random.Generator,
    row: str = "an example",
    features=None,
) -> dict[str, torch.Tensor]:
    """One training example: augmented image, multi-hot image labels, pixel mask, (mask labels if any)."""
    image, mask = read_example(example, columns, row, features, num_classes, augment.ignore_index)
    if mask is not None:  # checked ids (0..C, ignore): the cast keeps them
        mask = mask.astype(mask_dtype(num_classes, augment.ignore_index), copy=False)
    image, mask, valid = augment(image, mask, rng)
    item = {
        "pixel_values": normalize(image, augment.normalization),
        "class_labels": multi_hot(example["image_labels"], num_classes),
        "pixel_mask": torch.from_numpy(valid.astype(np.uint8)),
    }
    if mask is not None:
        item["labels"] = torch.from_numpy(mask.astype(np.int64))
    return item


class SharedEpoch:
    """The epoch that seeds a training set's crops and flips, held in shared memory (a 0-dim int64 tensor, which
    torch's DataLoader workers share, forked or spawned): set as a plain attribute in the main process, it never
    reached the workers of ``persistent_workers=True``, which drew every epoch's crops as the first epoch's."""

    def __init__(self):
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch of the crops and flips drawn now."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and flips of ``epoch``, in this process and in the DataLoader's workers."""
        self._epoch.fill_(epoch)


class WeakSegmentationDataset(SharedEpoch, Dataset):
    """Training examples: augmented image, multi-hot image labels, pixel mask, (mask labels if any).

    Augmentation randomness is a function of (seed, epoch, index), so a resumed run sees exactly the
    same crops as an uninterrupted one, with any number of DataLoader workers. Images and masks are decoded
    here (`decode_image`): an unreadable file raises an error naming it (`add_image_labels` has checked them
    all before training).
    """

    def __init__(
        self, dataset, columns: Columns, num_classes: int, augment: TrainAugmentation, seed: int = 0
    ):
        self.dataset = undecoded(dataset, [columns.image, columns.mask])
        self.columns, self.num_classes, self.split = columns, num_classes, split_name(dataset)
        self.augment, self.seed = augment, seed
        super().__init__()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        row = f"training example {index}" + (f" of split {self.split!r}" if self.split else "")
        return train_item(
            self.dataset[index],
            self.columns,
            self.num_classes,
            self.augment,
            rng,
            row,
            getattr(self.dataset, "features", None),
        )


class StreamingWeakSegmentationDataset(SharedEpoch, IterableDataset):
    """Training examples from a streamed ``datasets.IterableDataset`` (no length, no random access).

    Order: a shuffle buffer of ``shuffle_buffer_size`` examples (and shuffled shards) seeded by
    (seed, epoch) (``datasets`` uses seed + epoch); augmentation randomness is a function of (seed,
    epoch, DataLoader worker, position in the stream). A pass is therefore the same every time, which
    is what resuming relies on: it replays the interrupted pass and skips the batches already trained
    on. With DataLoader workers, ``datasets`` splits the shards among them.

    A stream cannot be checked ahead: an unreadable image or mask raises an error naming its file when it
    is met, or, with ``skip_unreadable=True``, is skipped with a warning naming it (and listed in
    ``skipped``, in the process that met it). The other examples keep their crops, so resuming still
    replays a pass exactly.
    """

    def __init__(
        self,
        dataset,
        columns: Columns,
        num_classes: int,
        augment: TrainAugmentation,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        skip_unreadable: bool = False,
    ):
        self.split = split_name(dataset)
        dataset = undecoded(dataset, [columns.image, columns.mask])
        if shuffle_buffer_size > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.dataset, self.columns, self.num_classes = dataset, columns, num_classes
        self.augment, self.seed = augment, seed
        self.skip_unreadable, self.skipped = skip_unreadable, []
        super().__init__()

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and flips, and the shuffle (``datasets``'), of pass ``epoch``."""
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        where = f"streamed split {self.split!r}" if self.split else "the stream"
        for position, example in enumerate(self.dataset):
            rng = np.random.default_rng([self.seed, self.epoch, worker_id, position])
            row = f"example {position} of pass {self.epoch} over {where}" + (
                f" (DataLoader worker {worker_id})" if worker is not None else ""
            )
            try:
                item = train_item(
                    example,
                    self.columns,
                    self.num_classes,
                    self.augment,
                    rng,
                    row,
                    getattr(self.dataset, "features", None),
                )
            except UnreadableImageError as err:
                if not self.skip_unreadable:
                    raise
                if err.source not in self.skipped:
                    self.skipped.append(err.source)
                warnings.warn(f"Skipped unreadable {err.source}: {err.reason}", stacklevel=1)
                continue
            yield item


class EvalSegmentationDataset(Dataset):
    """Evaluation examples at the original size: normalized image, mask labels, multi-hot labels.
    ``normalization``: the statistics of the model's image processor (`PixelNormalization.from_image_processor`);
    masks are checked against ``num_classes`` and ``ignore_index`` as they are read (`read_example`)."""

    def __init__(
        self,
        dataset,
        columns: Columns,
        num_classes: int,
        normalization: PixelNormalization,
        ignore_index: int = 255,
    ):
        if columns.mask is None:
            raise ValueError("Evaluation needs a mask column (pixel ground truth).")
        self.dataset = undecoded(dataset, [columns.image, columns.mask])
        self.columns, self.num_classes, self.split = columns, num_classes, split_name(dataset)
        self.normalization, self.ignore_index = normalization, ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.dataset[index]
        row = f"evaluation example {index}" + (f" of split {self.split!r}" if self.split else "")
        features = getattr(self.dataset, "features", None)
        image, mask = read_example(example, self.columns, row, features, self.num_classes, self.ignore_index)
        if mask is None:
            raise ValueError(f"{row.capitalize()} has no mask (column {self.columns.mask!r} is empty).")
        return {
            "pixel_values": normalize(image, self.normalization),
            "labels": torch.from_numpy(mask.astype(np.int64)),
            "class_labels": multi_hot(example["image_labels"], self.num_classes),
        }


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch from (seed, epoch): reproducible, and resumable at any position."""

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the tensors of a list of examples (all examples must have the same keys and sizes)."""
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def collate_by_size(examples: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """`collate` of evaluation examples whose images may differ in size (a validation set keeps each image's own
    size): one stacked batch per image size, in the order the sizes first appear."""
    return [collate(group) for group in group_by_size(examples)]


def materialize(dataset, limit: int | None = None, skip_unreadable: bool = False):
    """A random-access ``datasets.Dataset`` of (the first ``limit`` examples of) a dataset; a streamed
    one is read once into memory (meant for a validation split: evaluation and overlays index it).

    A streamed image that cannot be read raises an error naming its file, or with ``skip_unreadable=True``
    is left out with a warning naming it (random-access data is checked later, by `add_image_labels`).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit (--max_eval_samples) must be >= 1, got {limit}.")
    if not is_streaming(dataset):
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    import datasets

    features = dataset.features
    images = [c for c, f in (features or {}).items() if isinstance(f, datasets.Image) and f.decode]
    split = split_name(dataset)
    where = f"streamed split {split!r}" if split else "the stream"
    stream = undecoded(dataset, images)
    rows, skipped = [], 0
    for position, row in enumerate(stream.take(limit) if limit else stream):
        try:  # decoded here, as `datasets` would have, but naming the file that fails
            for column in images:
                row[column] = decode_image(
                    row[column], column, f"example {position} of {where}", features[column]
                )
        except UnreadableImageError as err:
            if not skip_unreadable:
                raise
            warnings.warn(f"Skipped unreadable {err.source}: {err.reason}", stacklevel=1)
            skipped += 1
            continue
        rows.append(row)
    if not rows:
        raise ValueError(
            "The streamed validation split is empty"
            + (f" ({skipped} unreadable examples skipped)." if skipped else ".")
        )
    return datasets.Dataset.from_list(
        rows, features=features, split=datasets.NamedSplit(split) if split else None
    )


@dataclass(frozen=True)
class LabelReading:
    """How a split's images, masks and image-level labels are read (`resolve_columns`, `add_image_labels`): the
    training and validation splits of a run read alike.

    ``image_column``, ``mask_column``, ``labels_column``: the columns, found by name where None (``labels_column``
    "none": the labels come from the masks); ``labels_zero_based``: the label column's ids are 0..C-1;
    ``class_names``: the run's classes, which a label column of names maps through (give the training set's);
    ``skip_empty``: images without any class are left out; ``skip_unreadable``: unreadable images and masks are
    dropped and listed rather than an error.
    """

    image_column: str | None = None
    mask_column: str | None = None
    labels_column: str | None = None
    labels_zero_based: bool = False
    class_names: Sequence[str | Sequence[str]] | None = None
    skip_empty: bool = False
    skip_unreadable: bool = False

    @classmethod
    def from_args(cls, args, class_names: Sequence[str | Sequence[str]] | None = None) -> LabelReading:
        """The reading of a script's parsed flags (--image_column, --mask_column, --labels_column,
        --labels_zero_based, and --skip_empty_images and --skip_unreadable_images where the script has them) with
        the run's ``class_names``."""
        return cls(
            image_column=getattr(args, "image_column", None),
            mask_column=getattr(args, "mask_column", None),
            labels_column=getattr(args, "labels_column", None),
            labels_zero_based=getattr(args, "labels_zero_based", False),
            class_names=class_names,
            skip_empty=getattr(args, "skip_empty_images", False),
            skip_unreadable=getattr(args, "skip_unreadable_images", False),
        )


def labelled_split(
    split,
    columns: Columns,
    num_classes: int,
    ignore_index: int,
    reading: LabelReading,
    labelling: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[Any, LabelSummary, str | None]:
    """``split`` with its image-level labels (`add_image_labels` as ``reading`` says, inside ``labelling``), their
    summary, and why no image of it has a class (`no_class_cause`; None when some image has one)."""
    name = split_name(split)
    with labelling():
        split, summary = add_image_labels(
            split,
            columns,
            num_classes,
            ignore_index,
            reading.labels_zero_based,
            reading.skip_empty,
            class_names=reading.class_names,
            skip_unreadable=reading.skip_unreadable,
        )
    return split, summary, no_class_cause(summary, columns, num_classes, ignore_index, name)


def evaluation_set(
    val,
    num_classes: int,
    ignore_index: int,
    normalization: PixelNormalization,
    reading: LabelReading = LabelReading(),
    *,
    max_samples: int | None = None,
    labelling: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[EvalSegmentationDataset, LabelSummary]:
    """The evaluation dataset of a validation split (its first ``max_samples`` examples; a streamed split read
    once) with its image-level labels, and their summary; ``labelling``: the context of `add_image_labels` (e.g.
    ``accelerator.main_process_first``, so that one process fills the datasets cache); ``reading.skip_empty``: the
    images without any class (of those first ``max_samples``) left out, as COCO's official validation list does.

    The image-level labels (what the CAMs are made for) come from the split's label column, read as the training
    split's (``reading``: give the training set's), else from its masks: the column ``reading.labels_column`` (the
    masks when the split lacks it), without it one found by name (`resolve_columns`)."""
    val = materialize(val, max_samples, skip_unreadable=reading.skip_unreadable)
    labels_column = reading.labels_column
    present = labels_column in (None, FROM_MASKS, *val.column_names, *struct_fields(val.features))
    columns = resolve_columns(
        val.column_names,
        reading.image_column,
        reading.mask_column,
        labels_column if present else None,
        require_mask=True,
        features=val.features,
        missing_mask_hint=f" Evaluating split {split_name(val)!r} needs its pixel ground truth (train.py: "
        "--validation_split none trains without evaluation).",
        class_names=reading.class_names,
        example=lambda: val[0],
    )
    columns = columns if present else Columns(columns.image, columns.mask)
    val, summary, cause = labelled_split(val, columns, num_classes, ignore_index, reading, labelling)
    if cause:  # every scored pixel background or ignored: its mIoUs would say nothing
        warnings.warn(f"{cause} Its scores measure nothing but the background.", stacklevel=2)
    return EvalSegmentationDataset(val, columns, num_classes, normalization, ignore_index), summary


def training_set(
    train,
    num_classes: int,
    augment: TrainAugmentation,
    reading: LabelReading = LabelReading(),
    *,
    require_mask: bool = False,
    seed: int = 0,
    shuffle_buffer_size: int = 1000,
    labelling: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[WeakSegmentationDataset | StreamingWeakSegmentationDataset, LabelSummary]:
    """The training dataset of a ``datasets`` split (a streamed one gives a `StreamingWeakSegmentationDataset`):
    image-level labels from the label column or the masks (`add_image_labels`), crops by ``augment``; and the
    labels' summary. Columns are found by name unless ``reading`` names them; ``require_mask``: fail without a
    mask column (full supervision); ``labelling``: the context of `add_image_labels` (e.g.
    ``accelerator.main_process_first``).

    A split in which no image has a class is refused (`no_class_cause`: nothing to learn); a streamed split, whose
    labels are read as it is, is warned of when none of its first images has one (`streamed_no_class_cause`)."""
    columns = resolve_columns(
        dataset_columns(train),
        reading.image_column,
        reading.mask_column,
        reading.labels_column,
        require_mask,
        train.features,
        class_names=reading.class_names,
        example=lambda: next(iter(train), {}),
    )
    train, summary, cause = labelled_split(
        train, columns, num_classes, augment.ignore_index, reading, labelling
    )
    if cause:
        raise ValueError(f"{cause} Training would learn nothing.")
    # (with skipped empty images, a stream of no class yields no batch: an error at its first pass)
    if is_streaming(train) and not reading.skip_empty:
        cause = streamed_no_class_cause(train, columns, num_classes, augment.ignore_index)
        if cause:
            warnings.warn(
                f"{cause} If no image of the stream has one, training learns nothing.", stacklevel=2
            )
    if is_streaming(train):
        dataset = StreamingWeakSegmentationDataset(
            train, columns, num_classes, augment, seed, shuffle_buffer_size, reading.skip_unreadable
        )
        return dataset, summary
    return WeakSegmentationDataset(train, columns, num_classes, augment, seed=seed), summary


def process_subset(dataset: Dataset, process_index: int, num_processes: int) -> Subset:
    """One process's share of an evaluation set (`process_share`'s examples; the shares' confusion matrices are
    summed; a share may be empty)."""
    return Subset(dataset, process_share(len(dataset), process_index, num_processes))


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


def check_local_dataset(path: str, flag: str) -> None:
    """Refuse a local dataset ``path`` (given as ``flag``) that is not an existing directory."""
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{flag} {path}: the directory does not exist.")
    if not Path(path).expanduser().is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file, not a dataset directory.")


def check_saved_splits(dataset_path: str) -> None:
    """Refuse a ``save_to_disk`` dataset with a split that holds no examples (``datasets`` fails to load it with
    an IndexError)."""
    root = Path(dataset_path).expanduser()
    for state in sorted([root / "state.json", *root.glob("*/state.json")]):
        if state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files", [None]):
            split = state.parent.name if state.parent != root else "the dataset"
            raise ValueError(
                f"Split {split!r} of --dataset_path {dataset_path} is empty: it has no examples."
            )


# the metadata files of an imagefolder (`datasets`' folder-based builder)
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
# the report beside the splits of an imagefolder of pseudo masks that examples/generate_pseudo_labels.py wrote
PSEUDO_LABEL_REPORT = "pseudo_label_report.json"


def holds_pseudo_masks(data_dir: str | None) -> bool:
    """Whether ``data_dir`` is a folder of pseudo masks written by examples/generate_pseudo_labels.py."""
    return data_dir is not None and (Path(data_dir) / PSEUDO_LABEL_REPORT).is_file()


# the folders of PASCAL VOC's own release (VOCdevkit/VOC2012), which is not an imagefolder
VOC_RELEASE_FOLDERS = ("JPEGImages", "SegmentationClass", "ImageSets")


def check_imagefolder_metadata(data_dir: str, flag: str = "--data_dir") -> None:
    """Refuse PASCAL VOC's own folder layout (``datasets`` would guess splits from ImageSets/, e.g. a 'validation'
    split of val.txt's lines, and fail far from the cause) and an imagefolder whose metadata file lists no row
    (``datasets`` fails on it with an IndexError); ``flag``: how the folder was given (--data_dir, or --dataset_name
    for a local folder)."""
    root = Path(data_dir).expanduser()
    found = sorted(root.rglob("metadata.*"))  # one walk of the folder, which may hold 100,000s of images
    if all((root / name).is_dir() for name in VOC_RELEASE_FOLDERS) and not found:
        raise ValueError(
            f"{flag} {data_dir} is laid out as PASCAL VOC's own release (JPEGImages/, SegmentationClass/, "
            "ImageSets/), not as an imagefolder: use the Hub dataset (--dataset_name, README 'Reproducing VOC "
            "and COCO') or build an imagefolder (train/ and validation/ with a metadata.jsonl naming each image and "
            "its mask: docs/training.md, 'The data')."
        )
    for path in (p for p in found if p.name in METADATA_NAMES):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        header = 1 if path.suffix == ".csv" else 0
        if len(lines) <= header:
            raise ValueError(
                f"{flag} {data_dir}: {path} lists no images (it has no rows); an imagefolder needs one row "
                "per image (file_name and its labels or mask)."
            )


def load_folder_dataset(
    path: str, streaming: bool = False, *, data_dir: str | None = None, name: str | None = None
):
    """The splits of a folder-based dataset: ``path`` "imagefolder" with ``data_dir`` (--data_dir), or a local folder
    or Hub repository (--dataset_name, its config ``name``). Where its splits' metadata files hold different fields
    (image-level labels in train/, masks in validation/: docs/training.md, "The data") or formats, or its Parquet
    splits different columns, which `datasets` refuses in one load (`_splits_load_apart`), or where some split
    folders hold a metadata file and others none (a folder per class in train/: `datasets` would read those with
    the other split's columns), each split is loaded on its own (its files found by `datasets`' own split
    patterns), its columns of nothing but nulls dropped."""
    import datasets
    from datasets.data_files import get_data_patterns
    from datasets.exceptions import DatasetGenerationError

    local = Path(data_dir or path).expanduser()
    if not _split_folders_differ_in_metadata(local):
        try:
            ds = datasets.load_dataset(path, name, data_dir=data_dir, streaming=streaming)
            # a stream's columns are those of the first file: a split of other columns fails when first read
            # (undecoded: an unreadable first image is for the reader, --skip_unreadable_images, to meet)
            for split in ds.values() if streaming else ():
                next(iter(split.decode(False)), None)
            return ds
        except (ValueError, DatasetGenerationError) as err:
            if not _splits_load_apart(err):
                raise
    # a Hub repository: its files, as `datasets` reads them
    base = str(local) if local.is_dir() else f"hf://datasets/{path}"
    splits = {}
    for split, patterns in get_data_patterns(base).items():
        ds = datasets.load_dataset(
            path, name, data_dir=data_dir, data_files={split: patterns}, split=split, streaming=streaming
        )
        features = ds.features or {}
        nulls = [k for k, v in features.items() if isinstance(v, datasets.Value) and v.dtype == "null"]
        splits[str(split)] = ds.remove_columns(nulls) if nulls else ds
    return (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)(splits)


def _splits_load_apart(error: BaseException) -> bool:
    """Whether `datasets` refused a load because its splits differ, which a load of each split on its own reads:
    metadata files of other fields ("have different features") or formats (metadata.csv in one, .jsonl in another:
    "different extensions"), Parquet files of other columns (a ``DatasetGenerationError`` caused by "column names
    don't match")."""
    causes = []
    while error is not None and len(causes) < 10:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    refusals = (
        "have different features",
        "metadata files with different extensions",
        "column names don't match",
    )
    return any(refusal in text for text in causes for refusal in refusals)


def imagefolder_split_name(name: str) -> str | None:
    """The split as which `datasets`' imagefolder reads a folder ``name`` back (`get_data_patterns`, the rule
    `load_folder_dataset` and ``load_dataset("imagefolder", data_dir=...)`` follow): ``name`` itself for train,
    validation and test; another name for one it takes as a spelling of those (val, dev: validation; training,
    train_aug: train); None for a name it reads as no split (unlabeled, trainaug: beside other splits left out,
    alone read with every file of the folder as one train split)."""
    import tempfile

    from datasets.data_files import get_data_patterns

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).mkdir()
        (Path(folder) / name / "metadata.jsonl").touch()
        patterns = get_data_patterns(folder)
    found = [str(split) for split, globs in patterns.items() if globs != ["**"]]
    return found[0] if found else None


def _split_folders_differ_in_metadata(folder: Path) -> bool:
    """Whether some of a local ``folder``'s split folders hold an imagefolder metadata file and others none."""
    if not folder.is_dir():
        return False
    held = {
        any(p.name in METADATA_NAMES for p in split.rglob("metadata.*"))
        for split in folder.iterdir()
        if split.is_dir() and not split.name.startswith(".")
    }
    return len(held) > 1


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
