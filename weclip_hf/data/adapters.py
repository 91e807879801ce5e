"""Dataset adapters: find the image / mask / image-label columns of any Hub or local dataset, and derive
image-level labels once, in preprocessing (never in the forward pass).

Conventions: masks hold class ids (0 = background, 1..C = foreground classes, ``ignore_index`` = void);
image-level labels are lists of foreground ids 1..C (``zero_based=True`` for 0..C-1 ids) or multi-hot
rows of width C.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

IMAGE_COLUMNS = ("image", "img", "pixel_values", "jpg", "png")
MASK_COLUMNS = ("annotation", "mask", "label", "segmentation", "semantic_mask", "seg")
LABEL_COLUMNS = ("image_labels", "labels", "classes", "class_labels", "cls_labels")

# Column layouts of common Hub datasets (unverified live: the Hub cannot be reached from here).
# ``train_splits``: the training split is the first of these the dataset has (VOC: the SBD-augmented
# "train_aug" set of 10,582 images the paper trains on, else "train").
DATASET_PRESETS: dict[str, dict] = {
    "voc": {"dataset_name": "jxie/pascal-voc-2012", "image_column": "image", "mask_column": "mask",
            "train_splits": ["train_aug", "train"], "validation_split": "validation"},
    "coco": {"dataset_name": None, "image_column": "image", "mask_column": "mask",
             "train_splits": ["train"], "validation_split": "validation"},
}  # fmt: skip


@dataclass
class Columns:
    """The columns a dataset provides for WeCLIP."""

    image: str
    mask: str | None = None
    labels: str | None = None


def is_streaming(dataset) -> bool:
    """True for a ``datasets.IterableDataset`` (streamed: no length, no random access)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def dataset_columns(dataset) -> list[str]:
    """Column names of a dataset; for a stream without declared features, the keys of its first example."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def resolve_columns(
    available: list[str],
    image_column: str | None = None,
    mask_column: str | None = None,
    labels_column: str | None = None,
    require_mask: bool = False,
) -> Columns:
    """Pick the image, mask and label columns (explicit names first, then common names)."""

    def pick(explicit, candidates, what, required):
        if explicit is not None:
            if explicit not in available:
                raise ValueError(f"{what} column {explicit!r} not found; available columns: {available}.")
            return explicit
        found = next((c for c in candidates if c in available), None)
        if found is None and required:
            raise ValueError(
                f"No {what} column found (looked for {list(candidates)}); available columns: {available}. "
                f"Pass --{what}_column."
            )
        return found

    image = pick(image_column, IMAGE_COLUMNS, "image", True)
    mask = pick(mask_column, [c for c in MASK_COLUMNS if c != image], "mask", require_mask)
    labels = pick(labels_column, [c for c in LABEL_COLUMNS if c not in (image, mask)], "labels", False)
    if mask is None and labels is None:
        raise ValueError(
            f"The dataset needs a mask column or an image-level label column; available columns: {available}. "
            "Pass --mask_column or --labels_column."
        )
    return Columns(image=image, mask=mask, labels=labels)


def labels_from_mask(mask, num_classes: int, ignore_index: int = 255, name: str = "") -> list[int]:
    """Present foreground ids (1..C) of a mask; raises on ids outside the class list."""
    ids = np.unique(np.asarray(mask))
    bad = [int(i) for i in ids if i != ignore_index and not 0 <= i <= num_classes]
    if bad:
        raise ValueError(
            f"Mask {name or '(unnamed)'} contains class id(s) {bad} outside 0..{num_classes} "
            f"(ignore index {ignore_index}); check --class_names / the preset."
        )
    return [int(i) for i in ids if 0 < i <= num_classes]


def normalize_label_row(row, num_classes: int, zero_based: bool = False, name: str = "") -> list[int]:
    """An image-level label row (ids or multi-hot of width C) -> sorted foreground ids 1..C."""
    values = np.asarray(row)
    if values.ndim != 1:
        raise ValueError(
            f"Image labels of {name or '(unnamed)'} must be a flat list, got shape {values.shape}."
        )
    if values.dtype.kind in "fb" and len(values) > 0:
        if len(values) != num_classes:
            raise ValueError(
                f"Multi-hot labels of {name or '(unnamed)'} have width {len(values)}, expected {num_classes}."
            )
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"Multi-hot labels of {name or '(unnamed)'} must be 0/1, got {values.tolist()}.")
        return [int(i) + 1 for i in np.nonzero(values)[0]]
    ids = values.astype(np.int64) + (1 if zero_based else 0)
    bad = [int(i) for i in ids if not 1 <= i <= num_classes]
    if bad:
        raise ValueError(
            f"Image labels of {name or '(unnamed)'} contain id(s) {bad} outside 1..{num_classes}."
        )
    return sorted({int(i) for i in ids})


@dataclass
class LabelSummary:
    """What preprocessing did to the dataset: printed, never silent."""

    total: int = 0
    empty: int = 0
    skipped: int = 0
    class_counts: Counter = field(default_factory=Counter)
    streamed: bool = False
    skip_empty: bool = False

    def __str__(self) -> str:
        if self.streamed:
            policy = "dropped" if self.skip_empty else "kept"
            return f"streamed: image-level labels are computed on the fly (no counts); empty label sets are {policy}"
        return (
            f"{self.total} images, {self.empty} with an empty label set "
            f"({self.skipped} skipped), class frequencies {dict(sorted(self.class_counts.items()))}"
        )


def add_image_labels(
    dataset,
    columns: Columns,
    num_classes: int,
    ignore_index: int = 255,
    zero_based: bool = False,
    skip_empty: bool = False,
    num_proc: int | None = None,
):
    """Add an ``image_labels`` column (ids 1..C) computed once from the label column or the masks.

    Images with an empty label set are kept by default (the model gives them all-background pseudo
    labels) or dropped with ``skip_empty=True``. Returns (dataset, LabelSummary). A streamed dataset
    (``datasets.IterableDataset``) gets a lazy map: labels are computed as examples are read, errors
    surface then, and the summary has no counts.
    """

    def compute(example, idx):
        name = f"#{idx}"
        if columns.labels is not None:
            ids = normalize_label_row(example[columns.labels], num_classes, zero_based, name)
        else:
            mask = example[columns.mask]
            ids = labels_from_mask(mask, num_classes, ignore_index, name)
            image = example[columns.image]
            if getattr(image, "size", None) != getattr(mask, "size", None):
                raise ValueError(f"Image {name} has size {image.size} but its mask has size {mask.size}.")
        return {"image_labels": ids}

    streamed = is_streaming(dataset)
    available = dataset_columns(dataset)
    drop = [c for c in ["image_labels"] if c in available and columns.labels != "image_labels"]
    if drop:
        dataset = dataset.remove_columns(drop)
    if columns.labels == "image_labels":
        dataset = dataset.rename_column("image_labels", "_image_labels")
        columns = Columns(columns.image, columns.mask, "_image_labels")
    if streamed:
        import datasets

        features = None
        if dataset.features is not None:  # keep the features known, so images still decode downstream
            features = dataset.features.copy()
            features["image_labels"] = datasets.List(datasets.Value("int64"))
        dataset = dataset.map(compute, with_indices=True, features=features)
    else:
        dataset = dataset.map(compute, with_indices=True, num_proc=num_proc, desc="image-level labels")
    if columns.labels == "_image_labels":
        # a list: IterableDataset.remove_columns("x") drops every column whose name is in the string "x"
        # (datasets 5.2: "_image_labels" would also drop "image" and "image_labels")
        dataset = dataset.remove_columns(["_image_labels"])
    if streamed:
        if skip_empty:
            dataset = dataset.filter(lambda ids: len(ids) > 0, input_columns="image_labels")
        return dataset, LabelSummary(streamed=True, skip_empty=skip_empty)
    summary = LabelSummary(total=len(dataset))
    for ids in dataset["image_labels"]:
        summary.class_counts.update(ids)
        summary.empty += not ids
    if skip_empty and summary.empty:
        dataset = dataset.filter(lambda ids: len(ids) > 0, input_columns="image_labels")
        summary.skipped = summary.empty
    return dataset, summary
