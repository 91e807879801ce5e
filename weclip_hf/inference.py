"""Inference helpers: long-side resize of normalized images, logits and pseudo labels of images of any size, and
multi-scale + flip logits (DESIGN Part 1)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .chunking import is_capturing_graph
from .input_checks import check_image_batch
from .presets import evaluation_of_config

# upsampled float32 class planes `upsampled_labels` holds at once: labels of large images without all their classes
# at the full size (a 24 MP image: 96 MB a class, 7.8 GB for COCO's 81); small images take all classes at once
# (21 classes up to 3.1 MP, 81 up to 0.8 MP)
LABELS_CHUNK_BYTES = 256 * 2**20


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Size with the long side = ``longest_edge`` and the other side int-truncated (375x500 -> 384x512).

    The official evaluation multiplies by the ratio ``512 / long side`` instead, which for some sizes falls 1 px
    short (103x103 -> 511x511; 151 of the (long side, side) pairs up to 1000, mostly squares); for VOC's long side
    (500) and COCO's usual one (640) both give the same sizes."""
    return _scaled_size(height, width, longest_edge, max(height, width))


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Size with the short side = ``shortest_edge`` and the other side int-truncated, as transformers'
    ``get_resize_output_image_size`` (``default_to_square=False``) computes it (30x40 -> 32 gives 32x42)."""
    return _scaled_size(height, width, shortest_edge, min(height, width))


def _scaled_size(height: int, width: int, target: int, side: int) -> tuple[int, int]:
    """(height, width) scaled so that ``side`` (one of them) becomes ``target``, int-truncated."""
    return int(height * target / side), int(width * target / side)  # multiply first: exact


def resized_size(height: int, width: int, size: int | Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) an image is resized to (each side at least 1 px): an int ``size`` is the long side (the
    official evaluation's 512); a mapping is an image processor's ``size``: ``{"longest_edge": L}``,
    ``{"shortest_edge": S}`` or ``{"height": h, "width": w}`` (other keys, such as an evaluation's
    ``size_divisor``, say nothing of the size: a mapping of none of these keeps it)."""
    if not isinstance(size, Mapping):
        size = {"longest_edge": size}
    sides = [size[k] for k in ("longest_edge", "shortest_edge", "height", "width") if k in size]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in sides):
        raise ValueError(f"The size to resize to must be given in positive integers, got {size!r}.")
    if "longest_edge" in size:
        height, width = longest_edge_size(height, width, size["longest_edge"])
    elif "shortest_edge" in size:
        height, width = shortest_edge_size(height, width, size["shortest_edge"])
    elif "height" in size:
        height, width = size["height"], size["width"]
    return max(1, height), max(1, width)


def resize_images(pixel_values: torch.Tensor, size: int | Mapping[str, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of normalized images [B, 3, H, W] to `resized_size` (an int: the long
    side), as the official evaluation resizes the normalized tensor; images already at that size are returned."""
    target = resized_size(*pixel_values.shape[-2:], size)
    if target == tuple(pixel_values.shape[-2:]):
        return pixel_values
    return F.interpolate(pixel_values, size=target, mode="bilinear", align_corners=False)


def resize_longest_edge(pixel_values: torch.Tensor, longest_edge: int = 512) -> torch.Tensor:
    """`resize_images` to a long side of ``longest_edge`` (the official evaluation's resize)."""
    return resize_images(pixel_values, longest_edge)


def pad_to_multiple(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad normalized images [B, 3, H, W] at the bottom/right to a multiple of ``multiple`` in each side, as
    the image processor's ``do_pad`` pads them to its patch size."""
    height, width = pixel_values.shape[-2:]
    return F.pad(pixel_values, (0, -width % multiple, 0, -height % multiple))


def upsampling_size(
    size: tuple[int, int], resized: tuple[int, int] | None = None, padded: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The size logits are upsampled to for ``size`` (H, W): ``size`` itself, or for images resized to ``resized``
    and zero-padded to ``padded`` the padded extent at that scale (the padding is cropped after)."""
    if resized is None or padded is None:
        return tuple(size)
    height, width = size
    return round(height * padded[0] / resized[0]), round(width * padded[1] / resized[1])


def upsample_cropping_padding(
    logits: torch.Tensor,
    size: tuple[int, int],
    resized: tuple[int, int] | None = None,
    padded: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Logits [B, K, h, w] of images resized to ``resized`` and zero-padded at the bottom/right to ``padded``,
    upsampled bilinearly to ``size`` (H, W) of the images before both: to the padded extent at that scale, then the
    padding cropped (the unpadded part is not stretched over the whole image); without them, plainly to ``size``."""
    height, width = size
    full = upsampling_size(size, resized, padded)
    return F.interpolate(logits, size=full, mode="bilinear", align_corners=False)[..., :height, :width]


def classes_per_chunk(num_classes: int, bytes_per_class: int, budget: int) -> int:
    """Classes `upsampled_labels` upsamples at once: as many as keep ``bytes_per_class`` times the chunk within
    ``budget`` bytes (at least one); all of them while a graph is captured (no loop over a shape-dependent count)."""
    if is_capturing_graph():
        return num_classes
    return max(1, min(num_classes, budget // max(bytes_per_class, 1)))


def upsampled_labels(
    logits: torch.Tensor,
    size: tuple[int, int],
    resized: tuple[int, int] | None = None,
    padded: tuple[int, int] | None = None,
    budget: int | None = None,
) -> torch.Tensor:
    """Label maps [B, H, W] (int64): exactly the argmax over classes of `upsample_cropping_padding` of ``logits``
    [B, K, h, w] as float32, with at most ``budget`` bytes (`LABELS_CHUNK_BYTES`) of upsampled class planes at once.

    Bilinear upsampling is independent per class, so the classes go a chunk at a time and a running maximum is
    kept: a later chunk takes a pixel only with a strictly larger value (or a NaN over a number), as the argmax
    keeps the first maximum (and ranks NaN highest). When all classes fit the budget (small images), one chunk.
    """
    num_classes = logits.shape[1]
    full = upsampling_size(size, resized, padded)
    chunk = classes_per_chunk(
        num_classes, 4 * logits.shape[0] * full[0] * full[1], LABELS_CHUNK_BYTES if budget is None else budget
    )

    def upsampled(start: int) -> torch.Tensor:
        return upsample_cropping_padding(logits[:, start : start + chunk].float(), size, resized, padded)

    if chunk >= num_classes:
        # the argmax's indices (the first maximum, NaN highest), ~2.5x faster than argmax over the strided class
        # axis on a CPU (torch 2.13: 29 against 12 ms for 21 classes at 375x500, one thread)
        return upsampled(0).max(dim=1).indices
    best, labels = upsampled(0).max(dim=1)  # [B, H, W]: the running maximum and its class
    # reused across chunks (fresh tensors of this size cost as much in page faults as the work on them)
    values, indices = torch.empty_like(best), torch.empty_like(labels)
    wins = torch.empty_like(best, dtype=torch.bool)
    finite = bool(torch.isfinite(logits).all())  # else upsampled NaNs (of NaN or inf logits) need ranking
    for start in range(chunk, num_classes, chunk):
        torch.max(upsampled(start), dim=1, out=(values, indices))
        torch.gt(values, best, out=wins)
        if not finite:
            wins |= values.isnan() & ~best.isnan()
        torch.where(wins, indices.add_(start), labels, out=labels)
        torch.maximum(best, values, out=best)  # NaN stays: nothing beats it, as in the argmax
    return labels


def pad_to_patch(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad normalized images [B, 3, H, W] at the bottom/right so each side is at least one patch (images
    smaller than a patch segment instead of being refused); larger images are returned as they are."""
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = max(0, patch_size - height), max(0, patch_size - width)
    return F.pad(pixel_values, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixel_values


def image_logits(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of images of any size of at least 1 px: [B, K, h, w] on the patch grid, or, for an image with a
    side smaller than one patch, at its pixel size (logits of the zero-padded image, upsampled, cropped)."""
    height, width = pixel_values.shape[-2:]
    patch = model.config.vision_config.patch_size
    if min(height, width) >= patch:
        return model(pixel_values=pixel_values).logits
    padded = pad_to_patch(pixel_values, patch)
    logits = model(pixel_values=padded).logits.float()
    logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :height, :width]


def image_pseudo_labels(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    class_labels: torch.Tensor,
    use_rfm: bool,
    max_size: int | Mapping[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels [B, H, W] of images [B, 3, H, W] of any size of at least 1 px with image-level
    ``class_labels`` [B, C] (``use_rfm``: refined with the decoder's affinity), and the CAMs [B, C, h, w]; an
    image with a side smaller than one patch is zero-padded and its labels cropped back. Images larger than
    ``max_size`` (a `resized_size` size: the model's input size) are computed at that size and their labels
    upsampled (nearest): the CAMs run CLIP over every patch, whose attention grows with the square of their
    number (a 3 MP photo needed 35 GB at its own size)."""
    height, width = pixel_values.shape[-2:]
    reduced = resized_size(height, width, max_size) if max_size is not None else (height, width)
    if reduced[0] * reduced[1] < height * width:
        pixel_values = resize_images(pixel_values, max_size)
    else:
        reduced = (height, width)
    padded = pad_to_patch(pixel_values, model.config.vision_config.patch_size)
    out = model(pixel_values=padded, class_labels=class_labels, use_rfm=use_rfm, return_loss=False)
    labels = out.pseudo_labels[..., : reduced[0], : reduced[1]]
    if reduced != (height, width):
        labels = resize_label_maps(labels, (height, width))
    return labels, out.cams


def resize_label_maps(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps [B, h, w] resized to ``size`` (H, W) by nearest neighbour, in their dtype."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)


@torch.no_grad()
def multiscale_flip_logits(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    scales: Sequence[float] | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Multi-scale + flip logits on the scale-1 logit grid: [B, K, h, w].

    ``scales``: finite numbers > 0; default: the evaluation scales of the model's preset (`evaluation_of_config`:
    WeCLIP on VOC 1.0 and 0.75, WeCLIP+ 1.0 and 1.5), those examples/evaluate.py and segment.py run.
    For each scale the image is resized bilinearly by ``scale_factor=s`` to (int(s*H), int(s*W)); the logits of
    the image and of its horizontal flip (flipped back) are averaged (what the official `validate()` computes, as
    the parity reference shows: summing them would double the logits); each scale's logits are resized bilinearly
    to the scale-1 logit grid and the scales are averaged there. Upsample the result to the label size and take the
    argmax for predictions (`WeCLIPImageProcessor.post_process_semantic_segmentation`).
    """
    check_image_batch(pixel_values)  # as given, before the flip doubles the batch
    scales = evaluation_of_config(model.config).msf_scales if scales is None else checked_scales(scales)
    height, width = pixel_values.shape[-2:]
    patch = model.config.vision_config.patch_size
    grid = (max(1, height // patch), max(1, width // patch))  # the scale-1 logit grid
    total = None
    for scale in scales:
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        # by scale_factor, as the official code: the samples lie 1/scale apart, not (side / int(scale * side))
        resize = {"scale_factor": scale} if min(height, width) * scale >= 1 else {"size": size}
        image = (
            pixel_values
            if size == (height, width)
            else F.interpolate(pixel_values, **resize, mode="bilinear", align_corners=False)
        )
        batch = torch.cat([image, image.flip(-1)]) if flip else image
        logits = image_logits(model, batch).float()
        if flip:
            plain, flipped = logits.chunk(2)
            logits = (plain + flipped.flip(-1)) / 2
        if logits.shape[-2:] != grid:
            logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=False)
        total = logits if total is None else total + logits
    return total / len(scales)


def checked_scales(scales: Iterable[float]) -> tuple[float, ...]:
    """``scales`` as a tuple of floats, refusing a single number, none, or one that is not a finite number > 0 (a
    scale of -2 or 0 ran the model on a one-pixel image: logits constant in space)."""
    if isinstance(scales, (numbers.Number, str)) or not isinstance(scales, Iterable):
        raise TypeError(f"scales must be a sequence of numbers, e.g. (1.0, 0.75), got {scales!r}.")
    scales = tuple(scales)
    finite = [
        isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in scales
    ]
    if not scales or not all(finite):
        raise ValueError(f"scales must be one or more finite numbers > 0, got {list(scales)}.")
    return tuple(map(float, scales))
