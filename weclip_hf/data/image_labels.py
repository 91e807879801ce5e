"""The dataset map that adds image-level labels: an ``image_labels`` column derived once, in preprocessing (never
in the forward pass), from a dataset's label column or its masks, every image and mask read and checked on the
way, and a `LabelSummary` of what was done."""

from __future__ import annotations

import functools
import hashlib
import itertools
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import image_reading
from ..wording import counted
from . import columns as column_finding
from . import decoding, label_rows, masks
from .columns import (
    FROM_MASKS,
    Columns,
    class_label_columns,
    dataset_columns,
    is_streaming,
    with_struct_field,
)
from .decoding import UnreadableImageError, decode_image, file_path, row_name, split_name, undecoded
from .label_rows import (
    background_width_hint,
    binary_rows,
    class_label_order,
    class_name_ids,
    label_value,
    multi_hot_rows,
    multi_hot_width,
    normalize_label_row,
)
from .masks import checked_mask, present_classes


@dataclass
class LabelSummary:
    """What preprocessing did to the dataset: printed, never silent."""

    total: int = 0
    empty: int = 0
    skipped: int = 0
    class_counts: Counter = field(default_factory=Counter)
    streamed: bool = False
    skip_empty: bool = False
    skip_unreadable: bool = False
    unreadable: list[str] = field(default_factory=list)  # the files (or rows) skipped as unreadable

    def __str__(self) -> str:
        if self.streamed:
            policy = "dropped" if self.skip_empty else "kept"
            text = f"streamed: image-level labels are computed on the fly (no counts); empty label sets are {policy}"
            if self.skip_unreadable:
                text += "; unreadable images and masks are skipped when met (each with a warning naming it)"
            return text
        text = (
            f"{counted(self.total, 'image')}, {self.empty} with an empty label set "
            f"({self.skipped} skipped), class frequencies {dict(sorted(self.class_counts.items()))}"
        )
        if self.unreadable:
            shown = self.unreadable[:20] + (
                [f"... and {len(self.unreadable) - 20} more"] if len(self.unreadable) > 20 else []
            )
            text += f"; {len(self.unreadable)} unreadable skipped (not counted above): " + "; ".join(shown)
        return text


def add_image_labels(
    dataset,
    columns: Columns,
    num_classes: int,
    ignore_index: int = 255,
    zero_based: bool = False,
    skip_empty: bool = False,
    num_proc: int | None = None,
    class_names: Sequence[str | Sequence[str]] | None = None,
    skip_unreadable: bool = False,
):
    """Add an ``image_labels`` column (ids 1..C) computed once from the label column or the masks, and
    check that every image and mask can be read.

    Label columns hold ids, multi-hot rows (integer ones told from ids by `multi_hot_rows`, on the whole column
    of a random-access dataset, row by row in a stream) or class names, which map through ``class_names`` (see
    `class_name_ids`). Images with an empty label set are kept by default (the model gives them
    all-background pseudo labels) or dropped with ``skip_empty=True``. The image and mask columns come back
    undecoded (``datasets.Image(decode=False)``); the WeCLIP datasets decode them, naming the file of any
    failure. Returns (dataset, LabelSummary).

    A random-access dataset is read whole here: every image and mask is decoded once, so an unreadable one
    fails now, naming its file and row, before any training (``skip_unreadable=True``: it is dropped and
    listed in the summary). A streamed dataset (``datasets.IterableDataset``) gets a lazy map: labels are
    computed as examples are read, errors (or skips, with a warning) happen then, and the summary has no
    counts.
    """
    streamed, split = is_streaming(dataset), split_name(dataset)
    dataset = with_struct_field(dataset, columns.labels)
    features = dataset.features or {}  # the image features' modes, for decoding
    check_images = not streamed or columns.labels is None  # a stream's images are checked by its reader
    given = columns  # as the dataset names them (``features``' keys, what messages name)
    dataset, columns = _label_columns_ready(dataset, columns)
    multi_hot = None
    if not streamed:
        multi_hot = _multi_hot_column(dataset, columns.labels, num_classes, zero_based, given.labels)
    elif columns.labels is not None and _integer_feature(features.get(given.labels)):
        _check_first_stream_rows(dataset, columns.labels, given.labels, num_classes, zero_based)
    label_row = functools.partial(
        row_image_labels,
        columns=columns,
        num_classes=num_classes,
        ignore_index=ignore_index,
        zero_based=zero_based,
        multi_hot=multi_hot,
        lookup=class_name_ids(class_names) if class_names is not None else None,
        features=features,
        split=split,
        streamed=streamed,
        check_images=check_images,
        skip_unreadable=skip_unreadable,
    )
    dataset = _map_label_rows(dataset, label_row, num_proc, with_mask=columns.mask is not None)
    # a list: IterableDataset.remove_columns("x") drops every column whose name is in the string "x"
    # (datasets 5.2: "_image_labels" would also drop "image" and "image_labels")
    hidden = ["_image_labels"] if columns.labels == "_image_labels" else []
    if streamed:  # read row by row: no column to compare with the masks
        return _filtered_stream(dataset, hidden, skip_empty, skip_unreadable)
    labels, mask_labels = dataset["image_labels"], dataset["_mask_labels"]
    if not multi_hot and _integer_feature(features.get(given.labels)):  # class ids, in the user's numbering
        check_label_numbering(labels, mask_labels, num_classes, zero_based, split)
        if zero_based:
            check_background_id(labels, given.labels, split)
    order = class_label_order(column_finding.column_feature(features, given.labels), class_names)
    check_labels_match_masks(labels, mask_labels, given, num_classes, split, order)
    return _summarised(dataset, hidden, skip_empty, skip_unreadable)


def _label_columns_ready(dataset, columns: Columns):
    """(dataset, columns) ready for `row_image_labels`: an ``image_labels`` column that is not the label column
    dropped, one that is renamed ``_image_labels``, the image and mask columns undecoded."""
    available = dataset_columns(dataset)
    drop = [c for c in ["image_labels"] if c in available and columns.labels != "image_labels"]
    if drop:
        dataset = dataset.remove_columns(drop)
    if columns.labels == "image_labels":
        dataset = dataset.rename_column("image_labels", "_image_labels")
        columns = Columns(columns.image, columns.mask, "_image_labels")
    return undecoded(dataset, [columns.image, columns.mask]), columns


def _multi_hot_column(
    dataset, column: str | None, num_classes: int, zero_based: bool, shown: str | None = None
) -> bool | None:
    """Whether the integer label ``column`` (``shown``: its name in messages) of a random-access dataset holds
    multi-hot rows (`multi_hot_rows`, decided on the whole column: one row can seldom tell); False without a label
    column or with other rows; None for a column of strings (JSON lists, as metadata.csv holds them: decided row by
    row). Multi-hot rows of another width than C (`multi_hot_width`) are refused: read as ids, every image would
    get classes 1 and 2 (zero-based), or a 0 refused without saying why."""
    if column is None or column in class_label_columns(dataset.features):
        return False
    if _value_dtype(dataset.features.get(column)) in ("string", "large_string"):
        return None
    values, split = dataset.with_format("arrow")[column], split_name(dataset)
    check_multi_hot_width(values, num_classes, shown or column, split)
    rows = binary_rows(values, num_classes)
    if rows is None:
        return False
    return multi_hot_rows(rows, zero_based, lambda i: row_name(i, split))


def check_multi_hot_width(
    values, num_classes: int, column: str, split: str | None, first: bool = False
) -> None:
    """Refuse an integer label ``column`` (``values``: its rows, a pyarrow array; ``first``: a stream's first rows)
    of multi-hot rows of another width than C (`multi_hot_width`): read as ids, every image would get classes 1 and
    2 (zero-based), or a 0 be refused without saying why."""
    width = multi_hot_width(values, num_classes)
    if width is None:
        return
    rows = f"its first {counted(len(values), 'row')}" if first else "its rows"
    raise ValueError(
        f"Label column {column!r} of {_split_phrase(split)} holds multi-hot rows of width {width}, not {num_classes} "
        f"({width} values 0/1 in each of {rows}, e.g. {row_name(0, None)}: {values[0].as_py()}), which read as class "
        f"ids would name classes 1 and 2 only.{background_width_hint(width, num_classes)} Else give the run's "
        f"{width} classes (--class_names), one per value."
    )


def _check_first_stream_rows(stream, column: str, shown: str, num_classes: int, zero_based: bool) -> None:
    """The checks of a random-access split's integer label ``column`` (``shown``: its name in messages) on the
    first `STREAM_CHECK_ROWS` rows of a ``stream``, whose labels are otherwise read row by row: multi-hot rows of
    another width (`check_multi_hot_width`) and, ``zero_based``, the background's 0 in every row
    (`check_background_id`)."""
    import pyarrow as pa

    split = split_name(stream)
    first = [row[column] for row in itertools.islice(stream.select_columns([column]), STREAM_CHECK_ROWS)]
    check_multi_hot_width(pa.array(first), num_classes, shown, split, first=True)
    if zero_based:
        ids = [normalize_label_row(row, num_classes, True, row_name(i, split)) for i, row in enumerate(first)]
        check_background_id(ids, shown, split, first=True)


def _value_dtype(feature) -> str | None:
    """The dtype of a label feature's values (``"int64"`` of `datasets.Value` or a list of them), else None."""
    import datasets

    inner = getattr(feature, "feature", feature)
    return inner.dtype if isinstance(inner, datasets.Value) else None


def _integer_feature(feature) -> bool:
    """Whether a label column of ``feature`` holds integers (one, or a list): class ids unless multi-hot."""
    return (_value_dtype(feature) or "").startswith(("int", "uint"))


def row_image_labels(
    example: dict,
    idx: int,
    *,
    columns: Columns,
    num_classes: int,
    ignore_index: int,
    zero_based: bool,
    multi_hot: bool | None,
    lookup: Mapping[str, int] | None,
    features: Mapping,
    split: str | None,
    streamed: bool,
    check_images: bool,
    skip_unreadable: bool,
) -> dict:
    """One example's ``image_labels`` (from its label column, or from its mask: without a label column, or where the
    row's label cell is null and it has a mask, as tagged rows beside fully annotated ones) and ``_unreadable`` (the
    file that could not be read, with ``skip_unreadable``; else None), its image and mask read and checked if
    ``check_images`` or its labels come from the mask."""
    if streamed:
        row = f"an example of streamed split {split!r}" if split else "an example of the stream"
    else:
        row = row_name(idx, split)
    from_mask = columns.labels is None or (
        example[columns.labels] is None and columns.mask is not None and example[columns.mask] is not None
    )
    try:
        decode = check_images or from_mask
        image, mask = _decoded_pair(example, columns, row, features) if decode else (None, None)
    except UnreadableImageError as err:
        if not skip_unreadable:
            raise
        if streamed:
            warnings.warn(f"Skipped unreadable {err.source}: {err.reason}", stacklevel=1)
        return {"image_labels": [], "_unreadable": err.source, "_mask_labels": None}
    if from_mask:
        ids = _mask_image_labels(example, columns, image, mask, row, num_classes, ignore_index)
        return {"image_labels": ids, "_unreadable": None, "_mask_labels": None}
    path = file_path(example[columns.image])
    name = row + (f" (image file {path!r})" if path else "")
    column = "image_labels" if columns.labels == "_image_labels" else columns.labels  # the user's name
    value = label_value(example[columns.labels], features.get(column), column, name)
    ids = normalize_label_row(value, num_classes, zero_based, name, lookup, multi_hot)
    # the mask's classes beside the row, for `check_label_numbering` and `check_labels_match_masks`
    shown = None
    if mask is not None:  # scored, or trained on with full supervision: checked as masks that give labels
        array = checked_mask(example, columns, image, mask, row, num_classes, ignore_index)
        shown = present_classes(array, num_classes)
    return {"image_labels": ids, "_unreadable": None, "_mask_labels": shown}


def _decoded_pair(example: dict, columns: Columns, row: str, features: Mapping) -> tuple:
    """(image, mask or None) of an example, decoded (``features``: the dataset's, for their modes); an unreadable
    file raises `UnreadableImageError` naming it."""
    image = decode_image(example[columns.image], columns.image, row, features.get(columns.image))
    mask = None
    if columns.mask is not None and example.get(columns.mask) is not None:
        mask = decode_image(example[columns.mask], columns.mask, row, features.get(columns.mask))
    return image, mask


def _mask_image_labels(
    example: dict, columns: Columns, image, mask, row: str, num_classes: int, ignore_index: int
) -> list[int]:
    """The foreground ids in an example's ``mask``, which must exist and pass `checked_mask`."""
    if mask is None:
        raise ValueError(
            f"{row.capitalize()} has no mask (column {columns.mask!r} is empty) and the dataset has no "
            "image-level label column to take its labels from."
        )
    array = checked_mask(example, columns, image, mask, row, num_classes, ignore_index)
    return present_classes(array, num_classes)


def _split_phrase(split: str | None) -> str:
    """How messages name a split: ``split 'train'``, or ``the dataset`` for one without a name."""
    return f"split {split!r}" if split else "the dataset"


def check_label_numbering(
    labels: Sequence[Sequence[int]],
    mask_labels: Sequence[Sequence[int] | None],
    num_classes: int,
    zero_based: bool,
    split: str | None = None,
) -> None:
    """Refuse a column of class ids whose rows name the classes of their masks (``mask_labels``: None where a row
    has no mask or holds no ids) more often when read in the other numbering, on at least half of the rows with
    masks: `--labels_zero_based` forgotten (zero-based ids without class 0 read as 1-based) or given wrongly would
    shift every class by one, silently. ``labels``: the rows read as classes 1..C."""
    shift = 1 if not zero_based else -1  # class of an id in the other numbering, relative to the one read
    pairs = [(set(ids), set(shown)) for ids, shown in zip(labels, mask_labels) if shown is not None]
    agree = sum(ids == shown for ids, shown in pairs)
    other = [i for i, (ids, shown) in enumerate(pairs) if {c + shift for c in ids} == shown and ids != shown]
    if len(other) <= agree or 2 * len(other) < len(pairs):
        return
    rows = [i for i, shown in enumerate(mask_labels) if shown is not None]
    first = rows[other[0]]
    given = sorted(c - zero_based for c in labels[first])  # the row's ids as the user wrote them
    reading, fix = (
        ("1-based", "pass --labels_zero_based (zero_based=True)")
        if not zero_based
        else (
            "zero-based",
            "drop --labels_zero_based (zero_based=False)",
        )
    )
    raise ValueError(
        f"The image-level labels of {_split_phrase(split)}, read as {reading} class "
        f"ids, disagree with its masks: {len(other)} of the {counted(len(pairs), 'row')} with masks name their "
        f"masks' classes only when read in the other numbering, {agree} as read (e.g. {row_name(first, None)}: ids "
        f"{given}, mask classes {sorted(mask_labels[first])} of 1..{num_classes}). Every class would be shifted "
        f"by one: {fix} (or correct the label column)."
    )


def check_background_id(
    labels: Sequence[Sequence[int]], column: str | None, split: str | None = None, first: bool = False
) -> None:
    """Refuse a column of zero-based class ids (``labels``: its rows read as classes 1..C; ``first``: a stream's
    first rows) in which every row with labels, two at least, holds id 0 (class 1): rows of a mask's ids, the
    background 0 among them, read so would shift every class by one and give every image class 1, silently."""
    rows = [ids for ids in labels if ids]
    if len(rows) < 2 or not all(1 in ids for ids in rows):
        return
    among = " first" if first else ""
    raise ValueError(
        f"The image-level labels of {_split_phrase(split)}: every one of the{among} {len(rows)} rows of column "
        f"{column!r} "
        "with labels holds id 0: read zero-based, class 1 is in every image. If 0 is the background (as in a mask's "
        "ids, np.unique(mask)), remove it from the rows and drop --labels_zero_based (zero_based=False) where the "
        "other ids are 1..C; if class 1 is in every image indeed, write the ids 1-based, without "
        "--labels_zero_based."
    )


def check_labels_match_masks(
    labels: Sequence[Sequence[int]],
    mask_labels: Sequence[Sequence[int] | None],
    columns: Columns,
    num_classes: int,
    split: str | None = None,
    order: tuple[list[str], dict[int, int]] | None = None,
) -> None:
    """Refuse a label column (``labels``: its rows read as classes 1..C, whatever their kind) none of whose classes
    is in the row's mask (``mask_labels``: the masks' classes, None where a row has no mask) on more than a quarter
    of the rows where both name a class. A few such rows are errors, which stay the user's; more say that labels
    and masks describe different things (a pet's breed beside a trimap of pet / background / border, a scene
    category), and one of them would be read as classes it does not hold, silently. ``order``: the label column's
    ClassLabel names and the run's class of each mask id numbered in their order (`class_label_order`), which the
    error names where the masks agree with the labels read so."""
    pairs = [
        (i, set(ids), set(shown)) for i, (ids, shown) in enumerate(zip(labels, mask_labels)) if ids and shown
    ]
    disagree = [(i, ids, shown) for i, ids, shown in pairs if not ids & shown]
    if 4 * len(disagree) <= len(pairs):
        return
    first, ids, shown = disagree[0]
    remedy = (
        "If the masks are not maps of the run's class ids (e.g. a trimap of object / background / border), they "
        "cannot be used: pass --mask_column of the class-id masks, or drop it (for training, a dataset without the "
        "column); if the label column does not hold the images' classes (e.g. a scene category), pass "
        f"--labels_column of the column that does, or --labels_column {FROM_MASKS} to take the labels from the masks."
    )
    if order is not None and 4 * sum(
        not ids & {order[1].get(c) for c in shown} for _, ids, shown in pairs
    ) <= len(pairs):
        remedy = (
            f"The masks agree with the labels read with their ids in the order of the ClassLabel names of column "
            f"{columns.labels!r} {order[0]}, not in the run's: remap their ids to the run's order, or give the "
            "dataset's classes (train.py without --preset and --class_names takes them from that column)."
        )
    raise ValueError(
        f"The image-level labels of {_split_phrase(split)} (column {columns.labels!r}) "
        f"and its masks (column {columns.mask!r}) disagree: on {len(disagree)} of the {counted(len(pairs), 'row')} "
        f"where both name a class, no class of the labels is in the mask (e.g. {row_name(first, None)}: label classes "
        f"{sorted(ids)}, mask classes {sorted(shown)} of 1..{num_classes}). {remedy}"
    )


# the first images of a streamed split whose labels are read before training (a stream's are never counted)
STREAM_CHECK_ROWS = 64


def no_class_cause(
    summary: LabelSummary,
    columns: Columns,
    num_classes: int,
    ignore_index: int,
    split: str | None,
    first: bool = False,
) -> str | None:
    """Why no image of a labelled split has a class (its ``summary`` counts none; ``columns``: where its labels came
    from), or None when some image has one, the split has no image, or, streamed, the counts are not known;
    ``first``: the summary counts the split's first images only (`streamed_no_class_cause`)."""
    if summary.streamed or summary.class_counts or summary.total == 0:
        return None
    where = _split_phrase(split)
    subject = (
        f"None of the first {counted(summary.total, 'image')} of {where}" if first else f"No image of {where}"
    )
    if columns.labels is not None:
        return f"{subject} has a class: every row of its label column {columns.labels!r} is empty."
    return (
        f"{subject} has a class: its masks (column {columns.mask!r}) hold no class id 1..{num_classes}, "
        f"only 0 (background) and the ignore index {ignore_index}. A binary mask's foreground is 255, VOC's void: "
        "map it to class 1 (e.g. mask // 255), or give --semantic_loss_ignore_index of the dataset."
    )


def streamed_no_class_cause(
    stream, columns: Columns, num_classes: int, ignore_index: int, rows: int = STREAM_CHECK_ROWS
) -> str | None:
    """`no_class_cause` of the first ``rows`` images of a labelled stream (`add_image_labels`; empty label sets
    kept), read now: binary 0/255 masks, say, show in the first images, not after a pass over the stream."""
    first = list(itertools.islice(stream.select_columns(["image_labels"]), rows))
    summary = LabelSummary(total=len(first))
    for row in first:
        summary.class_counts.update(row["image_labels"])
    return no_class_cause(summary, columns, num_classes, ignore_index, split_name(stream), first=True)


def _code_digest() -> str:
    """SHA-256 of the modules that read and check label rows, images and masks: part of the label map's cache key,
    so that `datasets` recomputes (and rechecks) labels it cached under code with other rules (it keys a function
    by its name, not its code)."""
    digest = hashlib.sha256()
    checking = (__file__, column_finding.__file__, label_rows.__file__, masks.__file__, decoding.__file__)
    for module in (*checking, image_reading.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()


def label_map_fingerprint(dataset, label_row) -> str:
    """The cache key of ``dataset``'s label map: its fingerprint, the mapped function with its arguments and the
    code that reads and checks the rows (`_code_digest`)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([dataset._fingerprint, label_row, _code_digest()])


def _map_label_rows(dataset, label_row, num_proc: int | None, with_mask: bool):
    """``dataset`` with the ``image_labels`` and ``_unreadable`` columns of `row_image_labels` (``label_row``):
    a lazy map on a stream (keeping its features known), a map over every row (in ``num_proc`` processes,
    cached under `label_map_fingerprint`) otherwise."""
    if not is_streaming(dataset):
        desc = "image-level labels, reading every image" + (" and mask" if with_mask else "")
        fingerprint = label_map_fingerprint(dataset, label_row)
        return dataset.map(
            label_row, with_indices=True, num_proc=num_proc, desc=desc, new_fingerprint=fingerprint
        )
    import datasets

    features = None
    if dataset.features is not None:  # keep the features known, so later steps see typed columns
        features = dataset.features.copy()
        features["image_labels"] = datasets.List(datasets.Value("int64"))
        features["_unreadable"] = datasets.Value("string")
        features["_mask_labels"] = datasets.List(datasets.Value("int64"))
    return dataset.map(label_row, with_indices=True, features=features)


def _filtered_stream(dataset, hidden: list[str], skip_empty: bool, skip_unreadable: bool):
    """(stream, LabelSummary without counts) of a labelled stream: unreadable (``skip_unreadable``) and empty
    (``skip_empty``) examples filtered out as they are read, the working columns dropped."""
    if skip_unreadable:
        dataset = dataset.filter(lambda source: source is None, input_columns="_unreadable")
    dataset = dataset.remove_columns(hidden + ["_unreadable", "_mask_labels"])
    if skip_empty:
        dataset = dataset.filter(lambda ids: len(ids) > 0, input_columns="image_labels")
    return dataset, LabelSummary(streamed=True, skip_empty=skip_empty, skip_unreadable=skip_unreadable)


def _summarised(dataset, hidden: list[str], skip_empty: bool, skip_unreadable: bool):
    """(dataset, LabelSummary) of a labelled random-access dataset: unreadable examples dropped and listed, empty
    ones counted (and dropped with ``skip_empty``), the working columns dropped."""
    unreadable = [source for source in dataset["_unreadable"] if source is not None]
    if unreadable:
        dataset = dataset.filter(lambda source: source is None, input_columns="_unreadable")
    dataset = dataset.remove_columns(hidden + ["_unreadable", "_mask_labels"])
    summary = LabelSummary(total=len(dataset), skip_unreadable=skip_unreadable, unreadable=unreadable)
    for ids in dataset["image_labels"]:
        summary.class_counts.update(ids)
        summary.empty += not ids
    if skip_empty and summary.empty:
        dataset = dataset.filter(lambda ids: len(ids) > 0, input_columns="image_labels")
        summary.skipped = summary.empty
    return dataset, summary
