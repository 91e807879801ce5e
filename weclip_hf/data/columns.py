"""The columns of a dataset for WeCLIP: find the image, mask and image-level label columns of any Hub or local
dataset by their names and declared features (`resolve_columns`), and read a struct column's field as a column."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .label_rows import class_label_feature, class_name_ids, lookup_key

IMAGE_COLUMNS = ("image", "img", "pixel_values", "jpg", "png")
MASK_COLUMNS = ("annotation", "mask", "label", "segmentation", "semantic_mask", "seg")
LABEL_COLUMNS = ("image_labels", "labels", "classes", "class_labels", "cls_labels")
FROM_MASKS = "none"  # --labels_column none: no label column, the image-level labels come from the masks


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


def class_label_columns(features: Mapping | None) -> list[str]:
    """The columns of ``features`` that hold classification labels (`datasets.ClassLabel`, or lists of them): an
    image's class, e.g. the class folder of an imagefolder (``train/cat/1.jpg``), never a mask."""
    return [name for name, feature in (features or {}).items() if class_label_feature(feature) is not None]


def image_struct(feature) -> bool:
    """Whether a feature is a struct of an image file's ``bytes`` and ``path``: how `datasets.Image` stores an image,
    and how pandas writes one to Parquet (without the metadata that would make it a `datasets.Image`)."""
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"}


def struct_fields(features: Mapping | None, prefix: str = "") -> list[str]:
    """The fields of the struct columns of ``features`` (images stored as structs aside: `image_struct`), named as
    `datasets.Dataset.flatten` names their columns (``objects.category`` of a detection column ``objects:
    {category, bbox}``): label columns a user may name."""
    fields = []
    for name, feature in (features or {}).items():
        if isinstance(feature, dict) and not image_struct(feature):
            fields += [f"{prefix}{name}.{field}" for field in feature]
            fields += struct_fields(feature, f"{prefix}{name}.")
    return fields


def column_feature(features: Mapping | None, column: str | None):
    """The feature of ``column``: a column of ``features``, or a struct column's field named with a dot
    (`struct_fields`: ``objects.category``); None when ``features`` has neither."""
    features = features or {}
    if column is None or column in features:
        return features.get(column)
    feature = features
    for key in column.split("."):
        if not isinstance(feature, Mapping) or key not in feature:
            return None
        feature = feature[key]
    return feature


def holds_images(feature) -> bool:
    """Whether a declared feature holds images or 2-D arrays of integers: a mask column if anything, never
    image-level labels. Images: `datasets.Image`, ``{bytes, path}`` structs (`image_struct`), array features;
    nested lists of integers are arrays of class ids (lists of float coordinates are polygons, COCO's)."""
    import datasets

    if image_struct(feature) or isinstance(feature, (datasets.Image, datasets.Array2D, datasets.Array3D)):
        return True
    inner, depth = feature, 0
    while getattr(inner, "feature", None) is not None:
        inner, depth = inner.feature, depth + 1
    return (
        depth >= 2 and isinstance(inner, datasets.Value) and inner.dtype.startswith(("int", "uint", "bool"))
    )


def may_hold_masks(feature, first_value: Callable[[], object] | None = None) -> bool:
    """Whether a column of datasets ``feature`` (None: not declared) can hold masks, as the loader reads them: images
    (also as ``{bytes, path}`` structs: `image_struct`), arrays, bytes, or strings that are paths of image files
    (``first_value``: the value of the column's first row, read for strings only; None: strings may be paths).
    Class labels, numbers, flat lists, lists of float coordinates (polygons) and other structs cannot."""
    import datasets
    from PIL import Image

    if feature is None or holds_images(feature):
        return True
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            value = first_value() if first_value is not None else ""
            return first_value is None or (
                isinstance(value, str) and Path(value).suffix.lower() in Image.registered_extensions()
            )
        return feature.dtype in ("binary", "large_binary")
    return False


def resolve_columns(
    available: list[str],
    image_column: str | None = None,
    mask_column: str | None = None,
    labels_column: str | None = None,
    require_mask: bool = False,
    features: Mapping | None = None,
    missing_mask_hint: str = "",
    *,
    class_names: Sequence[str | Sequence[str]] | None = None,
    example: Callable[[], Mapping] | None = None,
) -> Columns:
    """Pick the image, mask and label columns (explicit names first, then common names). ``missing_mask_hint``: said
    after the error of a required mask column that is not found.

    With the dataset's ``features``, a classification label column (`class_label_columns`: an image's class) is a
    label column, never a mask, and a mask column found by name must be able to hold masks (`may_hold_masks`;
    ``example``: gives the dataset's first row, read to tell paths from class names in a column of strings). With
    a mask column and the run's ``class_names``, a classification column found by name whose classes are not all
    the run's (e.g. scene_parse_150's ``scene_category``) is passed over: the masks give the labels, as they do
    for ``labels_column="none"`` (`FROM_MASKS`). A label column may be a struct column's field, named with a dot
    (`struct_fields`: ``objects.category``)."""
    features = features or {}
    class_labels = class_label_columns(features)
    fields = struct_fields(features)

    def pick(explicit, candidates, what, required, hint="", also=()):
        if explicit is not None:
            if explicit not in (*available, *also):
                shown = f" (struct fields: {list(also)})" if also else ""
                raise ValueError(
                    f"{what} column {explicit!r} not found; available columns: {available}{shown}."
                )
            return explicit
        found = next((c for c in candidates if c in available), None)
        if found is None and required:
            raise ValueError(
                f"No {what} column found (looked for {list(candidates)}); available columns: {available}. "
                f"Pass --{what}_column.{hint}"
            )
        return found

    def first_value(column: str) -> Callable[[], object] | None:
        return None if example is None else lambda: example().get(column)

    image = pick(image_column, IMAGE_COLUMNS, "image", True)
    mask_candidates = [
        c
        for c in MASK_COLUMNS
        if c not in (image, labels_column, *class_labels)
        and (c not in features or may_hold_masks(features[c], first_value(c)))
    ]
    # columns of a mask's name that cannot hold masks (class labels aside), named in the error of no mask column
    skipped = (*mask_candidates, image, labels_column, *class_labels)
    passed = [c for c in MASK_COLUMNS if c in features and c not in skipped]
    passed_hint = "".join(f" Passed over: {c!r} ({features[c]}), which cannot hold masks." for c in passed)
    mask = pick(mask_column, mask_candidates, "mask", require_mask, passed_hint + missing_mask_hint)
    label_candidates = [c for c in (*LABEL_COLUMNS, *class_labels) if c not in (image, mask)]
    if mask is not None and class_names is not None:  # labels from the masks rather than from other classes
        lookup = class_name_ids(class_names)
        label_candidates = [
            c
            for c in label_candidates
            if c not in class_labels
            or all(lookup_key(n) in lookup for n in class_label_feature(features[c]).names)
        ]
    from_masks = labels_column == FROM_MASKS and FROM_MASKS not in available
    labels = None if from_masks else pick(labels_column, label_candidates, "labels", False, also=fields)
    if from_masks and mask is None:
        raise ValueError(
            f"--labels_column {FROM_MASKS} takes the image-level labels from the masks, but no mask column was found "
            f"(looked for {mask_candidates}); available columns: {available}. Pass --mask_column."
        )
    if labels is not None and holds_images(column_feature(features, labels)):
        raise ValueError(
            f"Column {labels!r}, taken as the image-level labels, holds {column_feature(features, labels)}: it looks "
            f"like masks, not lists of classes. Pass --mask_column {labels} (the labels then come from the masks), "
            "or --labels_column of the column that holds the image-level labels."
        )
    if mask is None and labels is None:
        fields_hint = f" (a struct column's field is named with a dot: {fields[0]!r})" if fields else ""
        raise ValueError(
            f"The dataset needs a mask column or an image-level label column; available columns: {available}. "
            f"Pass --mask_column or --labels_column{fields_hint}."
        )
    return Columns(image=image, mask=mask, labels=labels)


def with_struct_field(dataset, column: str | None):
    """``dataset`` with ``column`` added when it names a struct column's field (`struct_fields`:
    ``objects.category``), as `datasets.Dataset.flatten` gives it, the other columns as they are (an image stored
    as a ``{bytes, path}`` struct stays one); else ``dataset``. A random-access dataset gets the field's Arrow
    column (no copy, unless rows were selected: then the dataset is rewritten once), a stream a lazy map, its
    features kept."""
    import datasets

    if column is None or "." not in column or column in dataset_columns(dataset):
        return dataset
    struct, *path = column.split(".")
    if not is_streaming(dataset):
        field = dataset.select_columns([struct]).flatten().select_columns([column])
        return datasets.concatenate_datasets([dataset, field], split=dataset.split, axis=1)
    features = dataset.features.copy() if dataset.features is not None else None
    if features is not None:
        features[column] = column_feature(features, column)
    return dataset.map(
        lambda value: {column: functools.reduce(lambda v, key: v[key], path, value)},
        input_columns=struct,
        features=features,
    )
