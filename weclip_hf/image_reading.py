"""Image inputs -> RGB arrays: how the processor, the pipeline and the training data read any image.

Inputs accepted (``to_rgb_array``): PIL images (EXIF orientation applied; grayscale, palette, RGBA/LA (alpha
dropped, no compositing), CMYK, 16-bit and float modes converted to RGB: the 16-bit "I;16" modes scaled from
0-65535 whatever their values, 32-bit "I" read as 0-255 when its values fit, else as 0-65535), NumPy arrays and
torch tensors of shape [H, W], [H, W, C] or [C, H, W] with C = 1, 3 or 4, and file paths. Values: uint8 as 0-255,
uint16 scaled to 0-255, bool as 0/255, floats in [0, 1 + 1e-3] scaled to 0-255 (so 1.0000001 still counts as 1),
floats up to 2 refused as ambiguous (a [0, 1] image that overshoots, or a black 0-255 one), other floats and
integers taken as 0-255; bfloat16 (and other float dtypes NumPy lacks) are read as float32.
Channel axis: ``input_data_format`` ("channels_first" / "channels_last") when given; otherwise the end of the
shape whose length is 1, 3 or 4, and when both ends are (e.g. [3, H, 4]), torch tensors are read
channels-first and NumPy arrays channels-last (the usual layout of each). Empty images, NaN/inf values and
other channel counts raise a ValueError. A call's ``images`` (`image_list`) are one image, a list of images
(a list of lists is flattened one level, as transformers does), or a 4-D array or tensor as a batch ([B, C, H, W]
or [B, H, W, C]: each image read by the rules above). `open_image` opens what the processor and the pipeline
take besides: URLs and base64 strings (plain or ``data:image/...;base64,``), as transformers' ``load_image``, in
their own PIL mode.

``do_rescale=False`` means the input is already rescaled (transformers' meaning): the values are used as
given (no 0-255 reading, no [0, 1] guess, no range check). ``do_convert_rgb=False`` keeps the channels as given
(no gray -> RGB, no alpha dropping). `image_size` gives an input's (height, width) as read, without reading its
pixels; `label_tensor` reads a label map (class ids, not colours). A file that cannot be opened or decoded
(truncated, not an image, missing) raises `UnreadableImageError` naming it (`read_image_file`).

Imports only NumPy, torch, PIL, transformers, huggingface_hub (which transformers requires; its HTTP client
fetches URLs) and `json_files` (the standard library only): the module ships with a saved model's remote code.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# the HTTP client transformers' load_image uses
from huggingface_hub.utils import httpx
from PIL import Image, ImageOps
from transformers.image_utils import ChannelDimension

from .json_files import open_regular_file

CHANNEL_COUNTS = (1, 3, 4)  # the lengths that mark a channel axis when guessing the layout
UNIT_RANGE_TOLERANCE = 1e-3  # floats up to 1 + this count as [0, 1] images
# floats whose maximum lies between 1 + the tolerance and this are refused: a [0, 1] image that overshoots (bicubic
# resizing) or a 0-255 image darker than 1% grey, which no rule can tell apart
AMBIGUOUS_FLOAT_MAX = 2.0
# Pillow's 16-bit modes of each byte order ("I;16N": the machine's own) and 32-bit "I"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_RAW_MODES = ("RGB", "L", "F", *_SIXTEEN_BIT_MODES)  # read with np.asarray, without PIL's RGB conversion
# the single-channel modes a label map is read from ("F": float ids, read only when whole, as float arrays)
_LABEL_MODES = ("L", "P", "F", *_SIXTEEN_BIT_MODES)
_EXIF_ORIENTATION = 0x0112
# the longest input string an error message quotes whole (paths); longer ones (base64 images) by their start
_QUOTED_LENGTH = 200
# text made of base64's characters only, which `open_image` does not read as a path
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*=*")
_BATCH_HINT = (
    " A 4-D array or tensor is read as a batch only as the processor's whole `images` argument; elsewhere (in a"
    " list, or given to a pipeline) pass a list of images."
)


class UnreadableImageError(ValueError, OSError):
    """An image or mask that cannot be opened or decoded: ``source`` names its file (or row), ``reason`` says what
    failed. An `OSError` as PIL's own errors for such files (``image file is truncated``), which name no file."""

    def __init__(self, source: str, reason: str, fix: str = "fix or remove it"):
        super().__init__(f"Cannot read {source}: {reason}. {fix[:1].upper()}{fix[1:]}.")
        self.source, self.reason, self.fix = source, reason, fix

    def __reduce__(self):
        """Pickles with its three arguments (a DataLoader worker sends it to the main process, which re-raises it)."""
        return type(self), (self.source, self.reason, self.fix)

    def within(self, where: str) -> UnreadableImageError:
        """The same error with ``where`` (e.g. ``images[3]``) added to its source."""
        return type(self)(f"{self.source} ({where})", self.reason, self.fix)


@contextmanager
def naming_unreadable(
    source: str, error: type[UnreadableImageError] = UnreadableImageError
) -> Iterator[None]:
    """Turn any error raised inside into an ``error`` naming ``source`` (the original chained): damaged files
    raise OSError, SyntaxError, ValueError, EOFError, zlib.error, ... and missing ones FileNotFoundError, all of
    which mean "cannot read this file"."""
    try:
        yield
    except UnreadableImageError:
        raise
    except Exception as err:
        raise error(source, f"{type(err).__name__}: {str(err).rstrip('.')}") from err


def read_image_file(path: str | Path | BinaryIO, source: str | None = None) -> Image.Image:
    """The image at ``path`` (or in a binary file object), fully decoded (the file closed again);
    `UnreadableImageError` naming ``source`` (by default the file) when it cannot be read."""
    with (
        naming_unreadable(source or f"file {str(path)!r}"),
        _opened(path) as stream,
        Image.open(stream) as opened,
    ):
        opened.load()
        return opened.copy()


def _opened(path: str | Path | BinaryIO) -> BinaryIO:
    """A path opened for PIL by `open_regular_file` (a FIFO would block ``Image.open`` forever); a binary file
    object as given, left open."""
    return nullcontext(path) if hasattr(path, "read") else open_regular_file(path)


def quoted(text: str) -> str:
    """``text`` quoted for an error message: whole up to `_QUOTED_LENGTH` characters, else its start and its length
    (a base64 image runs to millions)."""
    if len(text) <= _QUOTED_LENGTH:
        return repr(text)
    return f"{text[:60]!r}... ({len(text)} characters)"


def open_image(image, timeout: float | None = None):
    """Path, URL or base64 string (plain or ``data:image/...;base64,``, line-wrapped or not) -> PIL image in its own
    mode; PIL images, arrays and tensors pass through. A string that is no existing file is read as base64 when it
    decodes as such, else as a missing file when it looks like a path (a separator or a suffix, and characters
    base64 lacks); errors quote a long string by its start and length (`quoted`). A URL that cannot be fetched
    (no connection, an HTTP error status) or is no image raises `UnreadableImageError` naming it."""
    if isinstance(image, Path):
        return read_image_file(image)
    if isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
        return image
    if not isinstance(image, str):
        raise TypeError(
            f"Unsupported image type {type(image).__name__}; expected a path, URL, base64 string, PIL image, "
            "NumPy array or torch tensor."
        )
    if image.startswith(("http://", "https://")):
        with naming_unreadable(f"URL {quoted(image)}"):
            response = httpx.get(image, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        return read_image_file(BytesIO(response.content), f"URL {quoted(image)}")
    if os.path.isfile(image):
        # decoded here, so that a damaged file's error names it
        return read_image_file(image)
    # base64 as transformers' load_image reads it: line breaks and other whitespace ignored
    data = "".join((image.partition(",")[2] if image.startswith("data:image/") else image).split())
    try:
        encoded = base64.b64decode(data, validate=True)
    except binascii.Error as err:
        if not _BASE64_TEXT.fullmatch(data) and ("/" in image or os.sep in image or Path(image).suffix):
            # a path: the processor's missing-file error
            read_image_file(image)
        raise ValueError(
            f"image {quoted(image)} is neither a URL, an existing file nor a base64-encoded image ({err})."
        ) from err
    return read_image_file(BytesIO(encoded), f"base64 image {quoted(image)} (not a URL nor an existing file)")


def channel_format(input_data_format: str | ChannelDimension | None) -> ChannelDimension | None:
    """None, "channels_first"/"channels_last" or a `ChannelDimension` -> `ChannelDimension` (or None)."""
    if input_data_format is None:
        return None
    try:
        fmt = ChannelDimension(input_data_format)
    except ValueError:
        fmt = None
    if fmt not in (ChannelDimension.FIRST, ChannelDimension.LAST):
        raise ValueError(
            f"input_data_format must be None, 'channels_first' or 'channels_last', got {input_data_format!r}."
        )
    return fmt


def _is_channels_first(shape: tuple[int, ...], input_data_format, prefer_first: bool) -> bool:
    """Whether a 3-D image of ``shape`` has its channels first (the rule of the module docstring)."""
    fmt = channel_format(input_data_format)
    if fmt is not None:
        return fmt == ChannelDimension.FIRST
    first, last = shape[0] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and last:
        return prefer_first
    if not (first or last):
        raise ValueError(
            f"Images need 1, 3 or 4 channels (first or last axis), got shape {shape}; pass "
            "input_data_format='channels_first' or 'channels_last' for other channel counts."
        )
    return first


def image_size(image, input_data_format=None) -> tuple[int, int]:
    """(height, width) of an image as the processor reads it (EXIF orientation and channel axis applied)."""
    if isinstance(image, (str, Path)):
        with (
            naming_unreadable(f"file {str(image)!r}"),
            _opened(image) as stream,
            Image.open(stream) as opened,
        ):
            return image_size(opened)
    if isinstance(image, Image.Image):
        width, height = image.size
        swapped = image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # transposed or 90-degree turns
        return (width, height) if swapped else (height, width)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        shape = tuple(image.shape)
        if len(shape) == 2:
            return shape
        if len(shape) == 3:
            first = _is_channels_first(shape, input_data_format, isinstance(image, torch.Tensor))
            return shape[1:] if first else shape[:2]
        raise ValueError(f"Images must be 2-D or 3-D (HWC or CHW), got shape {shape}.{_BATCH_HINT}")
    raise TypeError(f"Unsupported image type {type(image).__name__}; expected PIL, numpy, torch or a path.")


def to_rgb_array(
    image, input_data_format=None, do_rescale: bool = True, do_convert_rgb: bool = True
) -> np.ndarray:
    """Any supported image -> float32 [H, W, C] array: 0-255 RGB values by default (see the module docstring)."""
    if isinstance(image, (str, Path)):
        return to_rgb_array(read_image_file(image), input_data_format, do_rescale, do_convert_rgb)
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if do_convert_rgb and do_rescale:  # the default reading (16-bit modes through 8-bit, as before)
            if image.mode in _SIXTEEN_BIT_MODES:
                array = np.asarray(image, dtype=np.float64)
                # 16-bit modes: 0-65535, as uint16 arrays; 32-bit "I" says nothing of its range: 0-255 when it fits
                peak = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
                image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if image.mode == "F":
                return _read_array(np.asarray(image, dtype=np.float32), None, False, True, True)
            return np.asarray(image.convert("RGB"), dtype=np.float32)
        if do_convert_rgb and image.mode not in _RAW_MODES:
            image = image.convert("RGB")
        array = np.asarray(image)
        return _read_array(
            array, ChannelDimension.LAST if array.ndim == 3 else None, False, do_rescale, do_convert_rgb
        )
    if isinstance(image, torch.Tensor):
        return _read_array(_tensor_to_numpy(image), input_data_format, True, do_rescale, do_convert_rgb)
    if isinstance(image, np.ndarray):
        return _read_array(image, input_data_format, False, do_rescale, do_convert_rgb)
    raise TypeError(f"Unsupported image type {type(image).__name__}; expected PIL, numpy, torch or a path.")


def to_rgb_uint8(image) -> np.ndarray:
    """Any supported image -> uint8 [H, W, 3]: `to_rgb_array`'s 0-255 RGB values, rounded. An 8-bit PIL image (or a
    file of one) is converted by PIL directly, the same values without three float32 copies of it."""
    if isinstance(image, (str, Path)):
        image = read_image_file(image)
    if isinstance(image, Image.Image) and image.mode not in (*_SIXTEEN_BIT_MODES, "F"):
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))  # a writable copy (asarray's is not)
    return np.clip(to_rgb_array(image) + 0.5, 0, 255).astype(np.uint8)


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device -> NumPy array; float dtypes NumPy lacks (bfloat16, float8) become float32."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.numpy()


def _read_array(
    array: np.ndarray, input_data_format, prefer_first: bool, do_rescale: bool, do_convert_rgb: bool
) -> np.ndarray:
    """[H, W], [H, W, C] or [C, H, W] array -> float32 [H, W, C] (0-255 RGB values by default)."""
    if array.size == 0:
        raise ValueError(f"Empty image of shape {array.shape}.")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise ValueError(f"Images must be 2-D or 3-D (HWC or CHW), got shape {array.shape}.{_BATCH_HINT}")
    elif _is_channels_first(array.shape, input_data_format, prefer_first):
        array = np.moveaxis(array, 0, -1)
    channels = array.shape[-1]
    if do_convert_rgb and channels not in CHANNEL_COUNTS:
        raise ValueError(f"Images need 1, 3 or 4 channels, got {channels} (HWC shape {array.shape}).")
    values = _pixel_values(array) if do_rescale else array.astype(np.float32)
    if not do_rescale and not np.isfinite(values).all():
        raise ValueError("Image contains NaN or infinite values.")
    if do_convert_rgb:
        values = np.repeat(values, 3, axis=-1) if channels == 1 else values[..., :3]
    return np.ascontiguousarray(values)


def _pixel_values(array: np.ndarray) -> np.ndarray:
    """Array of any dtype -> float32 0-255 values (the reading rules of the module docstring)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    values = array.astype(np.float32)
    if array.dtype == np.uint16:
        return values * (255.0 / 65535.0)
    if not np.isfinite(values).all():
        raise ValueError("Image contains NaN or infinite values.")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:  # the input's own values, before any [0, 1] scaling
        raise ValueError(
            f"Pixel values must lie in [0, 255] (or [0, 1] for floats), got [{low}, {high}]; "
            "pass do_rescale=False for images that are already rescaled."
        )
    if np.issubdtype(array.dtype, np.floating):
        if high <= 1.0 + UNIT_RANGE_TOLERANCE:
            return np.minimum(values, 1.0) * 255.0
        if high < AMBIGUOUS_FLOAT_MAX:
            raise ValueError(
                f"Float pixel values up to {high:.4g} are ambiguous: a [0, 1] image that overshoots 1 (e.g. after "
                "bicubic resizing) or an almost black 0-255 image. Clip a [0, 1] image to [0, 1] "
                "(np.clip(image, 0, 1)), or pass 0-255 values as uint8."
            )
    return values


def image_list(images) -> tuple[list, bool]:
    """``images`` of a call -> (its images, whether it is one image): a list or tuple, or a 4-D array or tensor
    [B, C, H, W] / [B, H, W, C], is a batch; a list of lists one batch of all their images (flattened one level,
    as transformers' ``make_flat_list_of_images``); anything else one image."""
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, (list, tuple)) for i in images):
        return [image for group in images for image in group], False
    if isinstance(images, (list, tuple)):
        return list(images), False
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images), False
    return [images], True


def label_tensor(label: Image.Image | np.ndarray | torch.Tensor | str | Path) -> torch.Tensor:
    """Label map (PIL, array, tensor, path) -> int64 [H, W] tensor. Palette/L PNGs keep their indices, 16-bit and
    32-bit maps (`_LABEL_MODES`, any byte order) their ids; a float map (an array, or PIL's mode "F") is read only
    when every value is a whole number (else a ValueError, as for NaN or inf)."""
    if isinstance(label, (str, Path)):
        return label_tensor(read_image_file(label))
    if isinstance(label, Image.Image):
        if label.mode not in _LABEL_MODES:
            raise ValueError(
                f"Label maps must be single-channel images of class ids (mode {'/'.join(_LABEL_MODES)}), got mode "
                f"{label.mode}."
            )
        # the array's dtype carries the byte order ("I;16B": big-endian uint16), which the int64 cast reads
        label = np.asarray(label)
    label = _tensor_to_numpy(label) if isinstance(label, torch.Tensor) else np.asarray(label)
    if label.dtype.kind == "f":  # class ids stored as floats: only whole numbers, which the cast keeps
        check_integral_label_map(label)
    label = torch.from_numpy(label.astype(np.int64))
    if label.ndim != 2:
        raise ValueError(f"Label maps must be 2-D [H, W], got shape {tuple(label.shape)}.")
    return label


def whole_numbers(values: np.ndarray) -> np.ndarray:
    """Which of ``values`` (floats) are finite whole numbers, which an integer cast keeps."""
    return np.isfinite(values) & (values == np.round(values))


def check_integral_label_map(label: np.ndarray, name: str = "") -> None:
    """Refuse a float label map that the int64 cast would change: NaN/inf or fractional values (0.99 -> 0).
    ``name``: the map as messages name it (a mask's file or row)."""
    whole = whole_numbers(label)
    if whole.all():
        return
    finite = np.isfinite(label)
    fractional = finite & ~whole
    problem = (
        f"NaN or infinite values ({int((~finite).sum())} pixels)"
        if not finite.all()
        else f"fractional values such as {np.unique(label[fractional])[:3].tolist()}"
    )
    raise ValueError(
        f"Label map {name + ' ' if name else ''}is a float map with {problem}: label maps hold integer class ids, "
        "and reading these as ids would change them. Pass an integer map (resize masks with nearest-neighbour, "
        "not bilinear, interpolation)."
    )


__all__ = [
    "CHANNEL_COUNTS",
    "UNIT_RANGE_TOLERANCE",
    "UnreadableImageError",
    "channel_format",
    "check_integral_label_map",
    "whole_numbers",
    "image_list",
    "image_size",
    "label_tensor",
    "naming_unreadable",
    "open_image",
    "read_image_file",
    "to_rgb_array",
    "to_rgb_uint8",
]
