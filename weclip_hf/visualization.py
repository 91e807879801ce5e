"""Label maps and overlays: the palette, palette PNGs of label maps, per-class pixel fractions, and overlay figures
(image, label maps blended over it, a legend of class names, one CAM heat map per present class), upscaled so that
96 px toy images are readable.

Used by `weclip_hf.evaluation.write_overlays` (examples/train.py), `examples/segment.py` and `examples/generate_pseudo_labels.py`.
Label maps hold the ids of ``config.id2label`` (0 = background, 1..C = classes, 255 = ignore by default: the
config's ``semantic_loss_ignore_index``, e.g. -100 for more than 254 classes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

IGNORE_NAME = "ignore"  # legend name of label 255 (VOC's void borders)
TITLE_HEIGHT = 22  # px of the title strip above each panel
FONT_SIZE = 14


def bit_colours(ids: np.ndarray) -> np.ndarray:
    """Label ids [N] (>= 0) -> their PASCAL VOC colour-map colours [N, 3] uint8: bit ``j`` of the red / green /
    blue value of id ``i`` is bit ``3 * (7 - j)`` / ``+ 1`` / ``+ 2`` of ``i``, so small ids get well separated
    colours, and ids up to 2**24 distinct ones (more than 255 classes)."""
    ids = np.asarray(ids, dtype=np.int64)[:, None, None]
    bit = np.arange(8)[None, :, None]  # the bit of the colour value, from the most significant one
    channel = np.arange(3)[None, None, :]
    bits = (ids >> (3 * bit + channel)) & 1  # [N, 8, 3]
    return (bits << (7 - bit)).sum(axis=1).astype(np.uint8)


def label_palette() -> np.ndarray:
    """The PASCAL VOC colour map: [256, 3] uint8, id 0 black, 255 = (224, 224, 192) (VOC's void colour)."""
    return bit_colours(np.arange(256))


PALETTE = label_palette()
VOID_COLOUR = PALETTE[255]  # of ignored pixels (VOC's void borders), whatever the ignore index


def label_colours(labels: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """A label map [H, W] of any integer ids -> its colours [H, W, 3] uint8 (`bit_colours`; ``ignore_index`` and
    any negative id in `VOID_COLOUR`), computed once per distinct id."""
    ids, inverse = np.unique(labels, return_inverse=True)
    colours = bit_colours(np.maximum(ids, 0))
    colours[(ids == ignore_index) | (ids < 0)] = VOID_COLOUR
    return colours[inverse.reshape(labels.shape)]


def as_label_array(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """A label map [H, W] (tensor or array of integer ids, e.g. more than 255 classes or an ignore index of -100)
    -> a uint8 array for ids 0..255 stored as uint8, else int32 (both of which PIL resizes)."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map [H, W], got shape {array.shape}.")
    if array.dtype.kind not in "iub":
        raise ValueError(f"labels must hold integer ids, got dtype {array.dtype}.")
    return array if array.dtype == np.uint8 else array.astype(np.int32)


def label_map_image(labels: torch.Tensor | np.ndarray, num_labels: int = 256) -> Image.Image:
    """A label map [H, W] -> PNG-ready PIL image whose pixel values are the ids: a palette ("P") image in `PALETTE`'s
    colours for ids 0..255, a 16-bit greyscale ("I;16") one for a model of more than 256 labels (``num_labels``,
    ids 0..65535), so that all label maps of a model are of one kind."""
    array = as_label_array(labels)
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"labels must hold ids 0..65535 for a PNG, got {low}..{high}.")
    if num_labels > 256 or high > 255:
        return Image.fromarray(array.astype(np.uint16))  # mode "I;16"
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette(PALETTE.tobytes())
    return image


def class_fractions(
    labels: torch.Tensor | np.ndarray, id2label: Mapping[int, str], ignore_index: int = 255
) -> dict[str, float]:
    """The fraction of the pixels of a label map [H, W] that each present class covers (ignored pixels count
    in the total, under ``"ignore"``); ids missing from ``id2label`` are named by their number."""
    ids, counts = np.unique(as_label_array(labels), return_counts=True)
    return _fractions(ids, counts, id2label, ignore_index)


def fractions_from_counts(
    counts: np.ndarray, id2label: Mapping[int, str], ignore_index: int = 255
) -> dict[str, float]:
    """Pixel counts per id [N] -> name -> fraction of all pixels, for the ids with pixels."""
    ids = np.nonzero(counts)[0]
    return _fractions(ids, counts[ids], id2label, ignore_index)


def _fractions(
    ids: np.ndarray, counts: np.ndarray, id2label: Mapping[int, str], ignore_index: int
) -> dict[str, float]:
    """Label ids and their pixel counts -> name (`label_name`) -> fraction of all the pixels counted."""
    total = counts.sum()
    return {label_name(int(i), id2label, ignore_index): float(c / total) for i, c in zip(ids, counts)}


def label_name(index: int, id2label: Mapping[int, str], ignore_index: int = 255) -> str:
    """The legend name of a label id: ``id2label``'s, ``"ignore"`` for ``ignore_index``, else its number."""
    if index == ignore_index:
        return IGNORE_NAME
    return str(id2label.get(index, id2label.get(str(index), index)))


def display_size(height: int, width: int, min_side: int = 256, max_side: int = 768) -> tuple[int, int]:
    """(height, width) an image is shown at: upscaled by a whole factor until its short side reaches ``min_side``
    (96 px -> 288 px), or downscaled so its long side is at most ``max_side``."""
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    factor = max(1, -(-min_side // max(1, min(height, width))))
    factor = min(factor, max(1, max_side // max(height, width)))
    return height * factor, width * factor


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> [size]: nearest neighbour when enlarging (pixels stay sharp), bilinear when shrinking."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    enlarge = height >= image.shape[0] and width >= image.shape[1]
    resample = Image.NEAREST if enlarge else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``colours`` uint8 [H, W, 3] painted over the image uint8 [H, W, 3] with opacity ``alpha``."""
    mixed = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    return mixed.round().astype(np.uint8)


def blend_labels(
    image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, ignore_index: int = 255
) -> np.ndarray:
    """image uint8 [H, W, 3] with the label map [H, W] (same size) painted over it in `label_colours`."""
    return blend(image, label_colours(labels, ignore_index), alpha)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] [...] -> "jet" colours [..., 3] uint8 (blue = 0, red = 1)."""
    x = np.clip(values, 0, 1)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at x = 3/4, 1/2, 1/4
    return (np.clip(1.5 - np.abs(4 * x - centres), 0, 1) * 255).round().astype(np.uint8)


def cam_heatmap(image: np.ndarray, cam: torch.Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A CAM [h, w] (values in [0, 1], any grid) upsampled bilinearly to the image [H, W, 3] uint8 and blended
    over it in "jet" colours."""
    cam = torch.as_tensor(cam, dtype=torch.float32)
    dense = F.interpolate(cam[None, None].cpu(), size=image.shape[:2], mode="bilinear", align_corners=False)
    return blend(image, heat_colours(dense[0, 0].numpy()), alpha)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def titled(panel: np.ndarray, title: str) -> Image.Image:
    """A panel uint8 [H, W, 3] with a white strip above it holding ``title``."""
    height, width = panel.shape[:2]
    canvas = Image.new("RGB", (width, height + TITLE_HEIGHT), "white")
    canvas.paste(Image.fromarray(panel), (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="black", font=_font())
    return canvas


def legend(ids: list[int], id2label: Mapping[int, str], ignore_index: int = 255) -> Image.Image:
    """A column of colour swatches, each with its class name, for the label ``ids``."""
    row = FONT_SIZE + 8
    names = [label_name(i, id2label, ignore_index) for i in ids]
    font = _font()
    width = 16 + FONT_SIZE + max((int(font.getlength(n)) for n in names), default=0) + 8
    canvas = Image.new("RGB", (width, TITLE_HEIGHT + row * len(ids) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "classes", fill="black", font=font)
    for k, (index, name) in enumerate(zip(ids, names)):
        top = TITLE_HEIGHT + k * row + 2
        draw.rectangle(
            [4, top, 4 + FONT_SIZE, top + FONT_SIZE],
            fill=tuple(int(c) for c in label_colours(np.array([index]), ignore_index)[0]),
            outline="gray",
        )
        draw.text((12 + FONT_SIZE, top), name, fill="black", font=font)
    return canvas


def overlay_figure(
    image: np.ndarray,
    label_maps: Mapping[str, torch.Tensor | np.ndarray],
    id2label: Mapping[int, str],
    cams: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    min_side: int = 256,
    max_side: int = 768,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> Image.Image:
    """One figure: the image, then each of ``label_maps`` (title -> [H, W] ids) blended over it, and a legend of
    the classes they show; below, a heat map of each of ``cams`` (title, e.g. a class name -> [h, w] in [0, 1]).
    Ids may be any integers: more than 255 classes, ``ignore_index`` (e.g. -100) shown in `VOID_COLOUR`.

    ``image``: uint8 [H, W, 3], the size of the label maps. Panels are shown at `display_size`."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 [H, W, 3] array, got {image.dtype} {image.shape}.")
    size = display_size(*image.shape[:2], min_side=min_side, max_side=max_side)
    shown = resize_rgb(image, size)
    maps = {title: as_label_array(labels) for title, labels in label_maps.items()}
    for title, labels in maps.items():
        if labels.shape != image.shape[:2]:
            raise ValueError(f"label map {title!r} has size {labels.shape}, the image {image.shape[:2]}.")
    top = [titled(shown, "image")] + [
        titled(blend_labels(shown, resize_labels(labels, size), alpha, ignore_index), title)
        for title, labels in maps.items()
    ]
    ids = np.unique(np.concatenate([labels.ravel() for labels in maps.values()])).tolist() if maps else []
    rows = [top, [titled(cam_heatmap(shown, cam), f"CAM: {name}") for name, cam in (cams or {}).items()]]
    key = legend(ids, id2label, ignore_index) if ids else None
    panel_w, panel_h = top[0].size
    columns = max(len(row) for row in rows)
    width = panel_w * columns + (key.width if key else 0)
    height = max(panel_h * sum(1 for row in rows if row), key.height if key else 0)
    figure = Image.new("RGB", (width, height), "white")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            figure.paste(panel, (c * panel_w, r * panel_h))
    if key is not None:
        figure.paste(key, (panel_w * columns, 0))
    return figure


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map [H, W] (`as_label_array`) -> [size] (nearest neighbour), of the same dtype."""
    if labels.shape == tuple(size):
        return labels
    resized = Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(resized).astype(labels.dtype, copy=False)  # PIL reads 16 bits as int32


def present_class_cams(
    cams: torch.Tensor, class_labels: torch.Tensor, id2label: Mapping[int, str]
) -> dict[str, torch.Tensor]:
    """Class name -> CAM [h, w] of each present class of one image: ``cams`` [C, h, w], ``class_labels`` [C]
    multi-hot over the foreground classes (ids 1..C)."""
    present = (class_labels > 0.5).nonzero().flatten().tolist()
    return {label_name(c + 1, id2label): cams[c].float().cpu() for c in present}


__all__ = [
    "PALETTE",
    "blend",
    "blend_labels",
    "cam_heatmap",
    "class_fractions",
    "display_size",
    "fractions_from_counts",
    "label_colours",
    "label_map_image",
    "label_palette",
    "legend",
    "overlay_figure",
    "present_class_cams",
]
