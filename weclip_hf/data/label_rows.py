"""Image-level label rows: one row of a label column (ids, multi-hot, class names, a ClassLabel index or a JSON
list) read as the sorted foreground class ids 1..C.

Conventions: image-level labels are lists of foreground ids 1..C (``zero_based=True`` for 0..C-1 ids), multi-hot
rows of width C (booleans, floats, or integers 0/1: see `multi_hot_rows`) or class names (`class_name_ids`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..image_reading import quoted, whole_numbers
from ..json_files import parse_json
from ..wording import counted


def class_label_feature(feature):
    """The `datasets.ClassLabel` of a label feature (one class, or a list of them), else None."""
    import datasets

    for candidate in (feature, getattr(feature, "feature", None)):
        if isinstance(candidate, datasets.ClassLabel):
            return candidate
    return None


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


def class_label_order(
    feature, class_names: Sequence[str | Sequence[str]] | None
) -> tuple[list[str], dict[int, int]] | None:
    """The names of a label column's `datasets.ClassLabel` ``feature`` and the run's class (1..C, through
    `class_name_ids` of ``class_names``) of each id 1..K numbered in their order, as a dataset's masks may number
    them; None without a ClassLabel or class names, or where that order is the run's."""
    class_label = class_label_feature(feature)
    if class_label is None or class_names is None:
        return None
    lookup = class_name_ids(class_names)
    names = list(class_label.names)
    order = {i: lookup[lookup_key(n)] for i, n in enumerate(names, start=1) if lookup_key(n) in lookup}
    return None if all(i == c for i, c in order.items()) else (names, order)


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
        remedy = next(
            filter(None, (joined_labels_hint(n, lookup) for n in unknown)), "Check --class_names / --preset."
        )
        raise ValueError(
            f"Image labels of {where} contain unknown class name(s) {bad}; expected names of the run's "
            f"{counted(num_classes, 'class', 'classes')}: {shown}. {remedy}"
        )
    return ids


def joined_labels_hint(value, lookup: Mapping[str, int]) -> str | None:
    """What to store instead of a label ``value`` that is one string of several labels or of ids: class ids written
    as text (``"1"``, ``"3,5"``) or class names of ``lookup`` joined by commas (``"cat,dog"``), which read as one
    unknown name; None for another value (a misspelt name)."""
    if not isinstance(value, str):
        return None
    parts = [part.strip() for part in value.split(",")]
    if all(part.isdecimal() for part in parts):
        ids = [int(part) for part in parts]
        return (
            f"{value!r} is a string of class ids: the label column must hold a list of integer ids, {ids} (a "
            f"metadata.csv cell: the JSON list {ids}), or a list of class names."
        )
    if len(parts) > 1 and all(lookup_key(part) in lookup for part in parts):
        return (
            f"{value!r} is one string of class names joined by commas: the label column must hold a list of names, "
            f"{parts} (a metadata.csv cell: the JSON list {json.dumps(parts)}), or a list of integer ids."
        )
    return None


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


def background_width_hint(width: int, num_classes: int) -> str:
    """The hint of a multi-hot row of ``width`` values for a run of ``num_classes`` classes: one value more is
    likely the background's, which the run's classes leave out; else nothing."""
    if width != num_classes + 1:
        return ""
    return (
        f" {width} = {counted(num_classes, 'class', 'classes')} + 1: a value for the background? Drop it: the "
        "run's classes are the foreground ones (WeCLIP's background comes from its background prompts)."
    )


def looks_multi_hot(values: np.ndarray) -> bool:
    """Whether a row of numbers reads as a multi-hot row rather than as class ids: 3 values or more, all 0 or 1
    (a list of ids would repeat one)."""
    return len(values) >= 3 and bool(np.isin(values, (0, 1)).all())


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


def multi_hot_width(values, num_classes: int) -> int | None:
    """The width W of a label column (a pyarrow column of lists) whose every row holds W >= 3 integers 0/1, W not
    ``num_classes``: multi-hot rows of another width than the run's classes (`binary_rows` decides on width C);
    else None."""
    import pyarrow as pa

    if len(values) == 0 or not pa.types.is_list(values.type) and not pa.types.is_large_list(values.type):
        return None
    width = len(values[0].as_py() or [])
    if width < 3 or width == num_classes:
        return None
    return width if binary_rows(values, width) is not None else None


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
    metadata.jsonl, an empty metadata.csv cell) is an empty label set, as ``[]`` is (a row with a mask takes its
    labels from the mask instead: `row_image_labels`)."""
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
        integral = (
            values.dtype.kind == "f" and bool(whole_numbers(values).all()) and not looks_multi_hot(values)
        )
        hint = (
            " Float rows are read as multi-hot vectors (one 0/1 value per class); if these are class ids, store "
            f"them as integers ({values.astype(np.int64).tolist()}, not {values.tolist()})."
            if integral
            else ""
        )
        if len(values) != num_classes:
            raise ValueError(
                f"Multi-hot labels of {where} have width {len(values)}, expected {num_classes}."
                + (hint or background_width_hint(len(values), num_classes))
            )
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"Multi-hot labels of {where} must be 0/1, got {values.tolist()}.{hint}")
        return [int(i) + 1 for i in np.nonzero(values)[0]]
    first = 0 if zero_based else 1  # the user's numbering: errors show their ids and range
    given = values.astype(np.int64)
    # read as ids, refused for the 0; a row of C values is `multi_hot_rows`' (its column's) to tell
    if not zero_based and looks_multi_hot(values) and 0 in values and len(values) != num_classes:
        raise ValueError(
            f"Image labels of {where}, {values.tolist()}, look like a multi-hot row (one value 0/1 per class) of "
            f"width {len(values)}, not {num_classes}.{background_width_hint(len(values), num_classes)}"
        )
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
            hint += (
                f" Ids 0..{num_classes - 1} number the classes from 0: give --labels_zero_based; if 0 is the "
                f"background (as in a mask's ids), leave it out: image-level labels name the classes 1..{num_classes}."
            )
        raise ValueError(
            f"Image labels of {where} contain id(s) {bad} outside "
            f"{first}..{first + num_classes - 1}{numbering}.{hint}"
        )
    return sorted({int(i) + 1 - first for i in given})


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
    try:  # `parse_json`: no NaN, 1e999 or nesting past the parser (a RecursionError)
        row = parse_json(value, "cell")
    except ValueError as err:
        row, reason = None, str(err).removeprefix("cell: ").rstrip(".")
    else:
        reason = f"a {type(row).__name__}"
    if not isinstance(row, list):
        raise ValueError(
            f"Image labels (column {column!r}) of {name}, {quoted(value)}, read as a JSON list but are not one "
            f'({reason}): write several labels of a row as a JSON list, [3, 7] or ["cat", "dog"].'
        )
    return row
