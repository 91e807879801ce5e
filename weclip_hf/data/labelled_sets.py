"""A split's training or evaluation set: its image-level labels read as `LabelReading` says (the columns, the
label ids, the images left out), a split whose images have no class refused or warned of, and the PyTorch dataset of
its batches (`batches`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from ..normalization import PixelNormalization
from .batches import (
    EvalSegmentationDataset,
    StreamingWeakSegmentationDataset,
    WeakSegmentationDataset,
    materialize,
)
from .columns import FROM_MASKS, Columns, dataset_columns, is_streaming, resolve_columns, struct_fields
from .decoding import split_name
from .image_labels import LabelSummary, add_image_labels, no_class_cause, streamed_no_class_cause
from .transforms import TrainAugmentation


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
