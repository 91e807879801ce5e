"""WeCLIP image processor: input conversion, normalization, long-side resize, post-processing.

Order of operations (the official evaluation's): convert to RGB float 0-255 -> normalize with the
ImageNet statistics -> bilinear resize of the normalized tensor (align_corners=False) so the long side
is ``size["longest_edge"]`` (int truncation of the other side) or to a fixed ``{"height", "width"}``
-> optional zero padding to a multiple of the patch size.

Inputs accepted: PIL images (EXIF orientation applied; grayscale, palette, RGBA/LA (alpha dropped, no
compositing), CMYK and 16-bit modes converted to 8-bit RGB), NumPy arrays and torch tensors in HWC or
CHW layout with 1, 3 or 4 channels (uint8 as 0-255, uint16 scaled to 0-255, floats in [0, 1] scaled to
0-255, other floats taken as 0-255), file paths. Empty images, NaN/inf values and other channel counts
raise a ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .inference import longest_edge_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # = (123.675, 116.28, 103.53) / 255, the official statistics
IMAGENET_STD = (0.229, 0.224, 0.225)  # = (58.395, 57.12, 57.375) / 255
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb_array(image) -> np.ndarray:
    """Any supported image -> float32 [H, W, 3] array of 0-255 values (see the module docstring)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return to_rgb_array(opened.copy())
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if array.max() > 255 else 255.0
            image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if image.mode == "F":
            return to_rgb_array(np.asarray(image, dtype=np.float32))
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"Unsupported image type {type(image).__name__}; expected PIL, numpy, torch or a path.")
    array = image
    if array.size == 0:
        raise ValueError(f"Empty image of shape {array.shape}.")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"Images must be 2-D or 3-D (HWC or CHW), got shape {array.shape}.")
    if array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Images need 1, 3 or 4 channels, got shape {image.shape}.")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        values = array.astype(np.float32)
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) * (255.0 / 65535.0)
    elif np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.float32)
    else:
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("Image contains NaN or infinite values.")
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"Pixel values must lie in [0, 255] (or [0, 1] for floats), got [{values.min()}, {values.max()}].")
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(values[..., :3])


class WeCLIPImageProcessor(BaseImageProcessor):
    r"""Image processor for WeCLIP.

    Args:
        do_resize (`bool`): resize (default True).
        size (`dict`): ``{"longest_edge": 512}`` (official evaluation) or ``{"height": h, "width": w}``.
        do_normalize (`bool`): normalize with ``image_mean``/``image_std`` (on 0-1 values).
        image_mean, image_std: ImageNet statistics by default (the official code's, on 0-255 pixels);
            pass ``CLIP_MEAN``/``CLIP_STD`` for CLIP's own.
        do_pad (`bool`): zero-pad (after normalization) at the bottom/right to a multiple of ``patch_size``
            (default False: the model floors the patch grid like the official code).
        patch_size (`int`): the CLIP patch size (16).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        do_pad: bool = False,
        patch_size: int = 16,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size or {"longest_edge": 512})
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.do_pad = do_pad
        self.patch_size = patch_size
        self._check_size(self.size)

    @staticmethod
    def _check_size(size: dict[str, int]) -> None:
        if set(size) not in ({"longest_edge"}, {"height", "width"}):
            raise ValueError(f"size must be {{'longest_edge': L}} or {{'height': h, 'width': w}}, got {size}.")
        if any(int(v) < 1 for v in size.values()):
            raise ValueError(f"size values must be positive, got {size}.")

    def _target_size(self, height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
        if "longest_edge" in size:
            return longest_edge_size(height, width, size["longest_edge"])
        return size["height"], size["width"]

    def preprocess(
        self,
        images,
        segmentation_maps=None,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        do_normalize: bool | None = None,
        do_pad: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Images (and optional label maps) -> ``pixel_values`` [B, 3, H', W'] float32 (and ``labels``
        [B, H', W'] int64, resized with nearest neighbour). All images of a batch must end up the same size."""
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else dict(size)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        do_pad = self.do_pad if do_pad is None else do_pad
        self._check_size(size)
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if not images:
            raise ValueError("No images given.")
        mean = torch.tensor(self.image_mean).view(3, 1, 1) * 255.0
        std = torch.tensor(self.image_std).view(3, 1, 1) * 255.0
        pixels = []
        for image in images:
            x = torch.from_numpy(to_rgb_array(image)).permute(2, 0, 1)
            if do_normalize:
                x = (x - mean) / std
            if do_resize:
                target = self._target_size(*x.shape[-2:], size)
                if min(target) < 1:
                    raise ValueError(f"Image of size {tuple(x.shape[-2:])} would be resized to {target}.")
                if target != tuple(x.shape[-2:]):
                    x = F.interpolate(x[None], size=target, mode="bilinear", align_corners=False)[0]
            pixels.append(x)
        shapes = {tuple(p.shape[-2:]) for p in pixels}
        if len(shapes) > 1:
            raise ValueError(
                f"Images of one batch end up with different sizes {sorted(shapes)}; process them one by one "
                "or use a fixed size={'height': h, 'width': w}."
            )
        pixel_values = torch.stack(pixels)
        data = {"pixel_values": pixel_values}
        if segmentation_maps is not None:
            maps = [segmentation_maps] if single else list(segmentation_maps)
            if len(maps) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(maps)} segmentation maps.")
            data["labels"] = torch.stack([self._prepare_label(m, pixel_values.shape[-2:]) for m in maps])
        if do_pad:
            data = {k: self._pad(v, k == "labels") for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _prepare_label(self, label, size) -> torch.Tensor:
        """Label map -> int64 [H, W] at ``size`` (nearest). Palette/L PNGs keep their indices."""
        if isinstance(label, (str, Path)):
            label = Image.open(label)
        if isinstance(label, Image.Image):
            if label.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"Label maps must be single-channel (mode L/P/I), got mode {label.mode}.")
            label = np.asarray(label)
        label = torch.from_numpy(np.array(label, dtype=np.int64))
        if label.ndim != 2:
            raise ValueError(f"Label maps must be 2-D [H, W], got shape {tuple(label.shape)}.")
        if tuple(label.shape) != tuple(size):
            label = F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()
        return label

    def _pad(self, tensor: torch.Tensor, is_label: bool) -> torch.Tensor:
        h, w = tensor.shape[-2:]
        p = self.patch_size
        pad = (0, (-w) % p, 0, (-h) % p)
        return F.pad(tensor, pad, value=255 if is_label else 0.0)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Logits -> per-image label maps [H, W] (bilinear upsampling to ``target_sizes[i]``, argmax)."""
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits.")
        results = []
        for logit, target in zip(logits, target_sizes):
            target = tuple(int(t) for t in target)
            up = F.interpolate(logit[None].float(), size=target, mode="bilinear", align_corners=False)
            results.append(up[0].argmax(dim=0))
        return results


__all__ = ["WeCLIPImageProcessor", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "to_rgb_array"]
