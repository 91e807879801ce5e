"""Dataset adapters: find the image / mask / image-label columns of any Hub or local dataset, and derive
image-level labels once, in preprocessing (never in the forward pass).

Conventions: masks hold class ids (0 = background, 1..C = foreground classes, ``ignore_index`` = void);
image-level labels are lists of foreground ids 1..C (``zero_based=True`` for 0..C-1 ids), multi-hot
rows of width C (booleans, floats, or integers 0/1: see `multi_hot_rows`) or class names.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import image_reading
from ..image_reading import check_integral_label_map, image_size, whole_numbers
from . import decoding
from .decoding import (
    UnreadableImageError,
    decode_image,
    describe,
    file_path,
    row_name,
    split_name,
    stored_as_jpeg,
    undecoded,
)

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


def class_label_feature(feature):
    """The `datasets.ClassLabel` of a label feature (one class, or a list of them), else None."""
    import datasets

    for candidate in (feature, getattr(feature, "feature", None)):
        if isinstance(candidate, datasets.ClassLabel):
            return candidate
    return None


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


def mask_array(mask, name: str = "") -> np.ndarray:
    """A mask image as its [H, W] array of class ids; a mask with channels (RGB), or of floats that are not whole
    numbers, is refused, saying what to do."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(
            f"Mask {name or '(unnamed)'} has shape {array.shape}: masks are single-channel images of class ids "
            "(PNG mode L or P). A colour-coded mask must be mapped to its class ids first; a grey mask saved as RGB "
            "can be converted with PIL's .convert('L')."
        )
    if array.dtype.kind == "f":  # a float mask (PIL mode F, a float array column): whole ids only
        check_integral_label_map(array, name or "(unnamed)")
    return array


def check_mask_ids(mask, num_classes: int, ignore_index: int = 255, name: str = "") -> None:
    """Refuse a mask ([H, W] array, or a tensor on the host) holding ids outside 0..C other than ``ignore_index``:
    scoring would drop their pixels, and training would cast them to uint8, wrapping 261 to 5."""
    values = np.asarray(mask)
    outside = ((values < 0) | (values > num_classes)) & (values != ignore_index)
    if not outside.any():
        return
    bad = [int(i) for i in np.unique(values[outside])]
    lossy = name.lower().endswith((".jpg", ".jpeg", ".jpg'", ".jpeg'"))  # a path, quoted or not
    hint = (
        "JPEG is lossy (the edges get ids between the classes'): save masks as PNG"
        if lossy
        else "check --class_names / the preset, or, where it marks ignored pixels, --semantic_loss_ignore_index"
    )
    raise ValueError(
        f"Mask {name or '(unnamed)'} contains class id(s) {bad} outside 0..{num_classes} "
        f"(ignore index {ignore_index}); {hint}."
    )


def labels_from_mask(mask, num_classes: int, ignore_index: int = 255, name: str = "") -> list[int]:
    """Present foreground ids (1..C) of a mask; raises on ids outside the class list (`check_mask_ids`)."""
    array = mask_array(mask, name)
    check_mask_ids(array, num_classes, ignore_index, name)
    return [int(i) for i in np.unique(array) if 0 < i <= num_classes]


def lookup_key(name: str) -> str:
    """A class name as `class_name_ids` keys it: case and surrounding spaces aside."""
    return name.strip().lower()


def class_name_ids(class_names: Sequence[str | Sequence[str]]) -> dict[str, int]:
    """Class name (`lookup_key`) -> id 1..C. Entry i names class i + 1: one name or several (e.g. the label
    name and the prompt name); comma-separated prompt synonyms (``"person with clothes,people,human"``)
    count as names too. A whole name wins over a synonym (ImageNet's ``"cardigan"`` is the class so named, not
    the one named ``"Cardigan, Cardigan Welsh corgi"``); a whole name of two classes maps to the first; a synonym
    of two classes maps to neither, so that a row using it is refused as unknown rather than read as one."""
    entries = [[names] if isinstance(names, str) else list(names) for names in class_names]
    lookup: dict[str, int] = {}
    synonyms: dict[str, set[int]] = {}
    for index, names in enumerate(entries, start=1):
        for name in names:
            lookup.setdefault(lookup_key(name), index)
            for alias in name.split(","):
                synonyms.setdefault(lookup_key(alias), set()).add(index)
    for alias, ids in synonyms.items():
        if alias and alias not in lookup and len(ids) == 1:
            lookup[alias] = min(ids)
    return lookup


def ids_from_names(
    names: list, num_classes: int, class_names: Mapping[str, int] | Sequence | None, name: str = ""
) -> list[int]:
    """Class names of an image-level label row -> sorted foreground ids 1..C (through `class_name_ids`)."""
    where = name or "(unnamed)"
    if class_names is None:
        raise ValueError(
            f"Image labels of {where} are class names {names[:5]}, but no class names were given to map "
            "them to ids (class_names=...; examples/train.py maps them through the run's class names)."
        )
    lookup = class_names if isinstance(class_names, Mapping) else class_name_ids(class_names)
    unknown = [n for n in names if not isinstance(n, str) or lookup_key(n) not in lookup]
    ids = sorted({lookup[lookup_key(n)] for n in names if n not in unknown})
    if unknown or any(i > num_classes for i in ids):
        canonical: dict[int, str] = {}
        for alias, index in lookup.items():
            canonical.setdefault(index, alias)
        known = [canonical[i] for i in sorted(canonical) if i <= num_classes]
        shown = known if len(known) <= 30 else known[:30] + [f"... ({len(known)} in all)"]
        bad = unknown or [canonical[i] for i in ids if i > num_classes]
        raise ValueError(
            f"Image labels of {where} contain unknown class name(s) {bad}; expected names of the run's "
            f"{num_classes} classes: {shown}. Check --class_names / --preset."
        )
    return ids


def multi_hot_rows(
    rows: np.ndarray, zero_based: bool = False, name_of: Callable[[int], str] | None = None
) -> bool:
    """Whether integer rows that each hold exactly C values 0/1 (``rows`` [N, C]: a label column, or one row) are
    multi-hot rows rather than lists of class ids; raises when that cannot be told.

    Multi-hot when the rows cannot be 1-based ids (a 0, without ``zero_based``) and some row repeats a value
    (always so with C >= 3), so that they are no list of distinct zero-based ids with ``zero_based`` forgotten
    either; or when every reading gives the same classes (e.g. [1] with C = 1). Otherwise (e.g. zero-based ids
    [0, 1] with C = 2, or multi-hot rows given ``zero_based``) a ValueError names the first row read two ways
    (``name_of``: a row's name) and how to store it so that it reads one way.
    """
    num_classes = rows.shape[1]
    holds = np.stack([(rows == 0).any(axis=1), (rows == 1).any(axis=1)], axis=1)  # [N, 2]: holds value 0, 1

    def as_ids(first: int) -> tuple[np.ndarray, np.ndarray]:
        """([N, C] classes, [N] valid) of the rows read as ids numbered from ``first``."""
        classes = np.zeros(rows.shape, bool)
        classes[:, : 2 - first] = holds[:, first : first + num_classes]  # id v is class v - first + 1
        return classes, (rows >= first).all(axis=1) & (rows < first + num_classes).all(axis=1)

    # each row as ids in the given numbering, or where it is no id list there, in the other (a flag forgotten)
    (given, valid), (other, _) = as_ids(int(not zero_based)), as_ids(int(zero_based))
    differ = (np.where(valid[:, None], given, other) != rows.astype(bool)).any(axis=1)
    if not differ.any():
        return True  # every reading gives the classes of the multi-hot rows
    repeats = num_classes > 1 + (rows.min(axis=1) != rows.max(axis=1))
    if not zero_based and holds[:, 0].any() and repeats.any():
        return True
    i = int(np.argmax(differ))
    shown, numbering = (given, zero_based) if valid[i] else (other, not zero_based)
    hint = (
        " Multi-hot rows have no numbering: drop --labels_zero_based." if zero_based and repeats.any() else ""
    )
    raise ValueError(
        f"Image labels of {name_of(i) if name_of else '(unnamed)'}, {rows[i].tolist()}, read two ways: as a "
        f"multi-hot row (classes {(np.nonzero(rows[i])[0] + 1).tolist()}) or as "
        f"{'zero-based' if numbering else '1-based'} class ids (classes {(np.nonzero(shown[i])[0] + 1).tolist()}). "
        "Store multi-hot rows as booleans or floats (true/false, 0.0/1.0) and class ids 1-based or as class "
        f"names: they read one way only.{hint}"
    )


def binary_rows(values, num_classes: int) -> np.ndarray | None:
    """The [N, C] integer array of label rows (a sequence of rows, or a pyarrow column of lists) when every row
    holds exactly ``num_classes`` integers, all 0 or 1 (what `multi_hot_rows` decides on); else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        kind = values.type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
            return None
        if not pa.types.is_integer(kind.value_type) or values.null_count or len(values) == 0:
            return None
        if (pc.list_value_length(values).to_numpy(zero_copy_only=False) != num_classes).any():
            return None
        flat = pc.list_flatten(values)
        if flat.null_count:
            return None
        rows = flat.to_numpy().reshape(len(values), num_classes)
    else:
        if len(values) == 0 or any(np.ndim(row) != 1 or len(row) != num_classes for row in values):
            return None
        rows = np.asarray(values)
        if rows.dtype.kind not in "iu":
            return None
    return rows if np.isin(rows, (0, 1)).all() else None


def normalize_label_row(
    row,
    num_classes: int,
    zero_based: bool = False,
    name: str = "",
    class_names: Mapping[str, int] | Sequence | None = None,
    multi_hot: bool | None = None,
) -> list[int]:
    """An image-level label row (ids, multi-hot of width C, or class names mapped through ``class_names``,
    see `class_name_ids`) -> sorted foreground ids 1..C. ``multi_hot``: whether integer rows are multi-hot, as
    `multi_hot_rows` decided for the whole label column; None: decided from this row alone. None (``null`` in
    metadata.jsonl, an empty metadata.csv cell) is an empty label set, as ``[]`` is."""
    where = name or "(unnamed)"
    if row is None:
        return []
    if isinstance(row, (str, int, np.integer)) and not isinstance(row, bool):  # one class: its name or id
        row = [row]
    values = np.asarray(row)
    if values.ndim != 1:
        hint = (
            ": a mask? Pass its column as --mask_column, and --labels_column for the labels"
            if values.ndim > 1
            else ""
        )
        raise ValueError(f"Image labels of {where} must be a flat list, got shape {values.shape}{hint}.")
    if values.dtype.kind in "USO" and len(values) > 0:
        return ids_from_names(list(row), num_classes, class_names, name)
    binary = binary_rows([values], num_classes) if values.dtype.kind in "iu" else None
    if multi_hot is None and binary is not None:
        multi_hot = multi_hot_rows(binary, zero_based, lambda _: where)
    if (values.dtype.kind in "fb" or multi_hot and binary is not None) and len(values) > 0:
        # float rows are multi-hot only (docs/training.md, "The data"): ids written as floats, e.g. [5.0] by
        # pandas, are refused, saying so, rather than read by their width
        integral = values.dtype.kind == "f" and bool(whole_numbers(values).all())
        hint = (
            " Float rows are read as multi-hot vectors (one 0/1 value per class); if these are class ids, store "
            f"them as integers ({values.astype(np.int64).tolist()}, not {values.tolist()})."
            if integral
            else ""
        )
        if len(values) != num_classes:
            raise ValueError(
                f"Multi-hot labels of {where} have width {len(values)}, expected {num_classes}.{hint}"
            )
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"Multi-hot labels of {where} must be 0/1, got {values.tolist()}.{hint}")
        return [int(i) + 1 for i in np.nonzero(values)[0]]
    first = 0 if zero_based else 1  # the user's numbering: errors show their ids and range
    given = values.astype(np.int64)
    bad = [int(i) for i in given if not first <= i < first + num_classes]
    if bad:
        numbering = " (--labels_zero_based)" if zero_based else ""
        hint = (
            f" Multi-hot rows are read as such when every row of the label column holds exactly {num_classes} "
            "values 0/1 (or they are booleans or floats)."
            if binary is not None
            else ""
        )
        if not zero_based and 0 in bad and all(0 <= i < num_classes for i in given):
            hint += f" Ids 0..{num_classes - 1} number the classes from 0: give --labels_zero_based."
        raise ValueError(
            f"Image labels of {where} contain id(s) {bad} outside "
            f"{first}..{first + num_classes - 1}{numbering}.{hint}"
        )
    return sorted({int(i) + 1 - first for i in given})


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
        f"The image-level labels of {'split ' + repr(split) if split else 'the dataset'}, read as {reading} class "
        f"ids, disagree with its masks: {len(other)} of the {len(pairs)} rows with masks name their masks' "
        f"classes only when read in the other numbering, {agree} as read (e.g. {row_name(first, None)}: ids "
        f"{given}, mask classes {sorted(mask_labels[first])} of 1..{num_classes}). Every class would be shifted "
        f"by one: {fix} (or correct the label column)."
    )


def check_labels_match_masks(
    labels: Sequence[Sequence[int]],
    mask_labels: Sequence[Sequence[int] | None],
    columns: Columns,
    num_classes: int,
    split: str | None = None,
) -> None:
    """Refuse a label column (``labels``: its rows read as classes 1..C, whatever their kind) none of whose classes
    is in the row's mask (``mask_labels``: the masks' classes, None where a row has no mask) on more than a quarter
    of the rows where both name a class. A few such rows are errors, which stay the user's; more say that labels
    and masks describe different things (a pet's breed beside a trimap of pet / background / border, a scene
    category), and one of them would be read as classes it does not hold, silently."""
    pairs = [
        (i, set(ids), set(shown)) for i, (ids, shown) in enumerate(zip(labels, mask_labels)) if ids and shown
    ]
    disagree = [(i, ids, shown) for i, ids, shown in pairs if not ids & shown]
    if 4 * len(disagree) <= len(pairs):
        return
    first, ids, shown = disagree[0]
    raise ValueError(
        f"The image-level labels of {'split ' + repr(split) if split else 'the dataset'} (column {columns.labels!r}) "
        f"and its masks (column {columns.mask!r}) disagree: on {len(disagree)} of the {len(pairs)} rows where both "
        f"name a class, no class of the labels is in the mask (e.g. {row_name(first, None)}: label classes "
        f"{sorted(ids)}, mask classes {sorted(shown)} of 1..{num_classes}). If the masks are not maps of the run's "
        "class ids (e.g. a trimap of object / background / border), they cannot be used: pass --mask_column of "
        "the class-id masks, or drop it (for training, a dataset without the column); if the label column does "
        f"not hold the images' classes (e.g. a scene category), pass --labels_column of the column that does, or "
        f"--labels_column {FROM_MASKS} to take the labels from the masks."
    )


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
            f"{self.total} images, {self.empty} with an empty label set "
            f"({self.skipped} skipped), class frequencies {dict(sorted(self.class_counts.items()))}"
        )
        if self.unreadable:
            shown = self.unreadable[:20] + (
                [f"... and {len(self.unreadable) - 20} more"] if len(self.unreadable) > 20 else []
            )
            text += f"; {len(self.unreadable)} unreadable skipped (not counted above): " + "; ".join(shown)
        return text


def no_class_cause(
    summary: LabelSummary, columns: Columns, num_classes: int, ignore_index: int, split: str | None
) -> str | None:
    """Why no image of a labelled split has a class (its ``summary`` counts none; ``columns``: where its labels came
    from), or None when some image has one, the split has no image, or, streamed, the counts are not known."""
    if summary.streamed or summary.class_counts or summary.total == 0:
        return None
    where = f"split {split!r}" if split else "the dataset"
    if columns.labels is not None:
        return f"No image of {where} has a class: every row of its label column {columns.labels!r} is empty."
    return (
        f"No image of {where} has a class: its masks (column {columns.mask!r}) hold no class id 1..{num_classes}, "
        f"only 0 (background) and the ignore index {ignore_index}. A binary mask's foreground is 255, VOC's void: "
        "map it to class 1 (e.g. mask // 255), or give --semantic_loss_ignore_index of the dataset."
    )


EXIF_HINT = (
    " The sizes are swapped: images are read upright (their EXIF orientation applied, as datasets decodes them),"
    " so a mask drawn on the stored pixels of a turned photo must be turned the same way."
)


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
    dataset, columns = _label_columns_ready(dataset, columns)
    multi_hot = None if streamed else _multi_hot_column(dataset, columns.labels, num_classes, zero_based)
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
    if not multi_hot and _integer_feature(features.get(columns.labels)):  # class ids, in the user's numbering
        check_label_numbering(labels, mask_labels, num_classes, zero_based, split)
    check_labels_match_masks(labels, mask_labels, columns, num_classes, split)
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


def _multi_hot_column(dataset, column: str | None, num_classes: int, zero_based: bool) -> bool | None:
    """Whether the integer label ``column`` of a random-access dataset holds multi-hot rows (`multi_hot_rows`,
    decided on the whole column: one row can seldom tell); False without a label column or with other rows; None
    for a column of strings (JSON lists, as metadata.csv holds them: decided row by row)."""
    if column is None or column in class_label_columns(dataset.features):
        return False
    if _value_dtype(dataset.features.get(column)) in ("string", "large_string"):
        return None
    rows = binary_rows(dataset.with_format("arrow")[column], num_classes)
    if rows is None:
        return False
    split = split_name(dataset)
    return multi_hot_rows(rows, zero_based, lambda i: row_name(i, split))


def _value_dtype(feature) -> str | None:
    """The dtype of a label feature's values (``"int64"`` of `datasets.Value` or a list of them), else None."""
    import datasets

    inner = getattr(feature, "feature", feature)
    return inner.dtype if isinstance(inner, datasets.Value) else None


def _integer_feature(feature) -> bool:
    """Whether a label column of ``feature`` holds integers (one, or a list): class ids unless multi-hot."""
    return (_value_dtype(feature) or "").startswith(("int", "uint"))


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
    """One example's ``image_labels`` (from its label column or its mask) and ``_unreadable`` (the file that could
    not be read, with ``skip_unreadable``; else None), its image and mask read and checked if ``check_images``."""
    if streamed:
        row = f"an example of streamed split {split!r}" if split else "an example of the stream"
    else:
        row = row_name(idx, split)
    try:
        image, mask = _decoded_pair(example, columns, row, features) if check_images else (None, None)
    except UnreadableImageError as err:
        if not skip_unreadable:
            raise
        if streamed:
            warnings.warn(f"Skipped unreadable {err.source}: {err.reason}", stacklevel=1)
        return {"image_labels": [], "_unreadable": err.source, "_mask_labels": None}
    if columns.labels is None:
        ids = _mask_image_labels(example, columns, image, mask, row, num_classes, ignore_index)
        return {"image_labels": ids, "_unreadable": None, "_mask_labels": None}
    path = file_path(example[columns.image])
    name = row + (f" (image file {path!r})" if path else "")
    column = "image_labels" if columns.labels == "_image_labels" else columns.labels  # the user's name
    value = label_value(example[columns.labels], features.get(columns.labels), column, name)
    ids = normalize_label_row(value, num_classes, zero_based, name, lookup, multi_hot)
    # the mask's classes beside the row, for `check_label_numbering` and `check_labels_match_masks`
    shown = None
    if mask is not None:  # scored, or trained on with full supervision: checked as masks that give labels
        array = checked_mask(example, columns, image, mask, row, num_classes, ignore_index)
        shown = [int(i) for i in np.unique(array) if 0 < i <= num_classes]
    return {"image_labels": ids, "_unreadable": None, "_mask_labels": shown}


def label_value(value, feature, column: str, name: str):
    """A label column's value as `normalize_label_row` reads it: `datasets.ClassLabel` indices (one or a list) as
    their names, which the class-name lookup maps to ids (the dataset's class order need not be the model's); a
    JSON list written as a string (a metadata.csv cell ``"[3, 7]"``) as its list; other values as they are. A
    struct (a detection column's ``{category, bbox}``) or an index the ClassLabel lacks (-1: an unlabelled row) is
    refused, naming the row (``name``), the ``column`` and what to do."""
    if isinstance(value, Mapping):
        fields = list(value)
        field = next((f for f in fields if f.lower().startswith(("categor", "label", "class"))), None)
        raise ValueError(
            f"Image labels (column {column!r}) of {name} are a struct with fields {fields}, not classes: name the "
            f"field that holds them with a dot, e.g. --labels_column {column}.{field or (fields or ['FIELD'])[0]}."
        )
    if isinstance(value, str) and value.strip().startswith("["):
        return _json_list(value, column, name)
    class_label = class_label_feature(feature)
    if class_label is None:
        return value
    indices = [int(v) for v in (value if class_label is not feature else [value])]
    bad = [i for i in indices if not 0 <= i < class_label.num_classes]
    if bad:
        test = f"r[{column!r}] != -1" if class_label is feature else f"-1 not in r[{column!r}]"
        what = (
            "-1, datasets' mark of an unlabelled row: leave such rows out first"
            if -1 in bad
            else f"{bad}, outside the ClassLabel's 0..{class_label.num_classes - 1}: leave such rows out or fix them"
        )
        raise ValueError(
            f"Image labels (column {column!r}) of {name} hold the class index {what} (e.g. "
            f"dataset.filter(lambda r: {test}), saved with save_to_disk for train.py's --dataset_path)."
        )
    names = [class_label.int2str(i) for i in indices]
    return names if class_label is not feature else names[0]


def _json_list(value: str, column: str, name: str) -> list:
    """A label row written as a JSON list (``"[3, 7]"``, ``'["cat", "dog"]'``) -> the list, else a ValueError."""
    try:
        row = json.loads(value)
    except json.JSONDecodeError as err:
        row, reason = None, str(err)
    else:
        reason = f"a {type(row).__name__}"
    if not isinstance(row, list):
        raise ValueError(
            f"Image labels (column {column!r}) of {name}, {value!r}, read as a JSON list but are not one "
            f'({reason}): write several labels of a row as a JSON list, [3, 7] or ["cat", "dog"].'
        )
    return row


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
    return [int(i) for i in np.unique(array) if 0 < i <= num_classes]


def checked_mask(
    example: dict, columns: Columns, image, mask, row: str, num_classes: int, ignore_index: int
) -> np.ndarray:
    """An example's decoded ``mask`` as its [H, W] array of ids, refused (naming its file, else its column and
    ``row``) when it is stored as JPEG (`stored_as_jpeg`: lossy, its edges hold ids of other classes), has
    channels (`mask_array`), ids outside 0..C other than ``ignore_index`` (`check_mask_ids`) or another size than
    its decoded ``image`` (EXIF orientation applied: `EXIF_HINT` when the sizes are swapped). Every mask the data
    pipeline reads passes here, whatever the columns: a mask of another size would be stretched to its image, or
    its image's predictions to it."""
    mask_name = describe(example[columns.mask], columns.mask, row)
    if stored_as_jpeg(example[columns.mask], mask):
        raise ValueError(
            f"Mask {mask_name} is stored as JPEG, which is lossy (its edges get ids between the classes': phantom "
            "classes in the image-level labels and the ground truth): re-save the masks as PNG."
        )
    array = mask_array(mask, mask_name)
    check_mask_ids(array, num_classes, ignore_index, mask_name)
    if width_height(image) != width_height(array):
        turned = width_height(image) == width_height(array)[::-1]
        raise ValueError(
            f"Image and mask of {row} differ in size (width, height): image "
            f"{_file_or_column(example[columns.image], columns.image)} {width_height(image)}, mask "
            f"{_file_or_column(example[columns.mask], columns.mask)} {width_height(array)}."
            + (EXIF_HINT if turned else "")
        )
    return array


def _file_or_column(value, column: str) -> str:
    """An image value as a message names it: its file, else its column."""
    path = file_path(value)
    return f"file {path!r}" if path else f"in column {column!r}"


def _code_digest() -> str:
    """SHA-256 of the modules that read and check label rows, images and masks: part of the label map's cache key,
    so that `datasets` recomputes (and rechecks) labels it cached under code with other rules (it keys a function
    by its name, not its code)."""
    digest = hashlib.sha256()
    for module in (__file__, decoding.__file__, image_reading.__file__):
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


def width_height(image) -> tuple[int, int] | None:
    """(width, height) of a PIL image or an array-like [H, W], [H, W, C] or [C, H, W] (read as the image processor
    reads arrays; PIL's order, which messages show; the processor's `image_size` gives (height, width)); None for
    None."""
    if image is None:
        return None
    if hasattr(image, "getbbox"):  # PIL
        return tuple(image.size)
    shape = np.shape(image)
    if len(shape) == 3:  # HWC or CHW, told apart as the image processor does
        height, width = image_size(np.asarray(image))
        return (width, height)
    return (shape[1], shape[0]) if len(shape) >= 2 else None
