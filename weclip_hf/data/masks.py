"""Mask checks: a mask is a single-channel [H, W] map of class ids (0 = background, 1..C = foreground classes,
``ignore_index`` = void), not stored as JPEG, of its image's size."""

from __future__ import annotations

import numpy as np

from ..image_reading import check_integral_label_map, image_size
from .columns import Columns
from .decoding import describe, file_path, lossy_storage

EXIF_HINT = (
    " The sizes are swapped: images are read upright (their EXIF orientation applied, as datasets decodes them),"
    " so a mask drawn on the stored pixels of a turned photo must be turned the same way."
)


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


def present_classes(mask, num_classes: int) -> list[int]:
    """The foreground class ids (1..C) present in a mask ([H, W] array of ids), sorted."""
    return [int(i) for i in np.unique(mask) if 0 < i <= num_classes]


def checked_mask(
    example: dict, columns: Columns, image, mask, row: str, num_classes: int, ignore_index: int
) -> np.ndarray:
    """An example's decoded ``mask`` as its [H, W] array of ids, refused (naming its file, else its column and
    ``row``) when it is stored in a lossy format (`lossy_storage`: JPEG's edges hold ids of other classes), has
    channels (`mask_array`), ids outside 0..C other than ``ignore_index`` (`check_mask_ids`) or another size than
    its decoded ``image`` (EXIF orientation applied: `EXIF_HINT` when the sizes are swapped). Every mask the data
    pipeline reads passes here, whatever the columns: a mask of another size would be stretched to its image, or
    its image's predictions to it."""
    mask_name = describe(example[columns.mask], columns.mask, row)
    lossy = lossy_storage(example[columns.mask], mask)
    if lossy:
        raise ValueError(
            f"Mask {mask_name} is stored as {lossy}, which is lossy (its edges get ids between the classes': phantom "
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
