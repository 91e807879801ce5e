"""The inputs as the run reads them: the files of --images or the images of a dataset split, their output
names, their records (what each input is, by its content), and the dataset a DataLoader reads them from."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from segmenting.image_files import find_image_files
from segmenting.naming import output_names
from weclip_hf import WeCLIPImageProcessor
from weclip_hf.batch_jobs import content_fingerprint
from weclip_hf.data.columns import IMAGE_COLUMNS
from weclip_hf.data.decoding import (
    UnreadableImageError,
    decode_image,
    describe,
    file_path,
    row_name,
    undecoded,
)
from weclip_hf.data.sources import DataSource, load_dataset_splits
from weclip_hf.image_reading import to_rgb_uint8


def input_record(stored, where, position: int) -> dict | None:
    """What the input at ``position`` is: ``{"source": its file or row, "input": its content_fingerprint}``; None
    where its file cannot be read (gone, a broken link: `ImageInputs` lists it as skipped)."""
    value = stored[position]
    try:
        fingerprint = content_fingerprint(value)
    except OSError:
        return None
    return {"source": file_path(value) or where(position), "input": fingerprint}


class ImageInputs(Dataset):
    """The inputs at ``positions`` as the processor reads them: each item the input's position, its
    `input_record`, the RGB image uint8 [H, W, 3] (EXIF orientation applied) and its ``pixel_values`` [3, h, w],
    or why it cannot be read."""

    def __init__(self, stored, where, positions: list[int], processor: WeCLIPImageProcessor):
        self.stored, self.where, self.positions, self.processor = stored, where, positions, processor

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        position = self.positions[i]
        try:
            rgb = self.read(position)
        except UnreadableImageError as err:
            return {"position": position, "error": f"{err.source}: {err.reason}"}
        inputs = self.processor(images=[rgb], input_data_format="channels_last", return_tensors="pt")
        record = input_record(self.stored, self.where, position)
        return {"position": position, "record": record, "rgb": rgb, "pixel_values": inputs["pixel_values"][0]}

    def read(self, position: int) -> np.ndarray:
        """The RGB image uint8 [H, W, 3] of an input; `UnreadableImageError` naming it where it cannot be read."""
        value, row = self.stored[position], self.where(position)
        column = getattr(self.stored, "column", None)  # files of --images: named by their path alone
        image = decode_image(value, column, row)
        try:
            return to_rgb_uint8(image)
        except (ValueError, TypeError) as err:  # decoded, but not an image the processor reads
            raise UnreadableImageError(describe(value, column, row), f"{type(err).__name__}: {err}") from err


class DatasetImages:
    """The stored images of a dataset split, read one at a time (``{"bytes", "path"}`` values for `decode_image`)."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = undecoded(dataset, [column]), column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][self.column]


def image_column(available: list[str], given: str | None) -> str:
    """The split's image column: ``given`` (--image_column), else the first of `IMAGE_COLUMNS` it has, as train.py
    and evaluate.py pick it (`img`, `pixel_values`, ...)."""
    if given is not None and given not in available:
        raise ValueError(f"--image_column {given!r} not found; columns: {available}.")
    found = given or next((c for c in IMAGE_COLUMNS if c in available), None)
    if found is None:
        raise ValueError(
            f"No image column found (looked for {list(IMAGE_COLUMNS)}); columns: {available}. Pass --image_column."
        )
    return found


def load_inputs(args, note: Callable[[str], None] = print) -> tuple:
    """(stored images: paths or a `DatasetImages`, output names, position -> description for messages); ``note``
    prints the folders of --images left out (`folder_files`)."""
    if args.images:
        paths = find_image_files(args.images, Path(args.output_dir), note)
        return [str(p) for p in paths], output_names(paths), functools.partial(row_name, split=None)
    source = DataSource.from_args(args)
    _, split, _ = load_dataset_splits(
        source, validation_split=args.split, need_train=False, dataset_classes=False
    )
    if split is None:
        raise ValueError(f"--split {args.split!r} not found in the dataset.")
    column = image_column(split.column_names, args.image_column)
    digits = max(6, len(str(len(split) - 1)))
    names = [f"{i:0{digits}d}" for i in range(len(split))]
    return (
        DatasetImages(split, column),
        names,
        functools.partial(dataset_row, split=args.split, dataset=source.name),
    )


def dataset_row(index: int, split: str, dataset: str) -> str:
    """``row 3 of split 'test' of data/voc``: a row as messages and input records name it."""
    return f"{row_name(index, split)} of {dataset}"
