"""Training augmentation and collation (DESIGN Part 1, training recipe).

Official augmentation: random rescale by a factor in [0.5, 2.0] (PIL bilinear on uint8), horizontal
flip with p = 0.5, random crop; images smaller than the crop are padded with raw 0 (black) pixels that
the method sees (CAMs, PAR, losses) unless `pixel_mask` is used to ignore them. No colour jitter.

The crops are normalized with the model's image processor's statistics (`TrainAugmentation.normalization`,
`PixelNormalization.from_image_processor`), by the same arithmetic as the processor: a crop gives the pixel
values the processor gives for it, so training, evaluation and serving see the same normalization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..normalization import PixelNormalization


@dataclass
class TrainAugmentation:
    """Random rescale, flip and crop of an (image, mask) pair; returns the image and mask (the mask keeps its dtype,
    `mask_dtype`: it must hold ``ignore_index``, the crop's padding) and a pixel mask.
    ``normalization`` (keyword, required): the statistics the crops are normalized with, those of the image
    processor saved with the model (`PixelNormalization.from_image_processor`)."""

    crop_size: int = 320
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    ignore_index: int = 255
    normalization: PixelNormalization = field(kw_only=True)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """image [H, W, 3] uint8, mask [H, W] or None -> (image [c, c, 3], mask [c, c], valid [c, c] bool)."""
        h, w = image.shape[:2]
        scale = rng.uniform(*self.scale_range)
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        if mask is not None:  # PIL reads a 16-bit mask as int32 ("I"): back to the mask's dtype
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)).astype(
                mask.dtype, copy=False
            )
        if rng.random() < self.flip_prob:
            image = image[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        return self._crop(image, mask, rng)

    def _crop(self, image, mask, rng):
        c = self.crop_size
        h, w = image.shape[:2]
        ph, pw = max(c, h), max(c, w)
        canvas = np.zeros((ph, pw, 3), dtype=np.uint8)  # raw 0 padding, as the official code
        valid = np.zeros((ph, pw), dtype=bool)
        oy, ox = rng.integers(0, ph - h + 1), rng.integers(0, pw - w + 1)
        canvas[oy : oy + h, ox : ox + w] = image
        valid[oy : oy + h, ox : ox + w] = True
        label = None
        if mask is not None:  # of the mask's dtype (`mask_dtype`), which holds the ignore index
            label = np.full((ph, pw), self.ignore_index, dtype=mask.dtype)
            label[oy : oy + h, ox : ox + w] = mask
        y0, x0 = rng.integers(0, ph - c + 1), rng.integers(0, pw - c + 1)
        window = (slice(y0, y0 + c), slice(x0, x0 + c))
        return canvas[window], None if label is None else label[window], valid[window]


def mask_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    """The smallest integer dtype of a training mask that holds ids 0..``num_classes`` and ``ignore_index``: uint8
    for VOC's 20 classes and 255 (memory and speed), int16 / uint16 / int32 for an ignore index of -100 or more
    than 255 classes (a uint8 mask could not hold them)."""
    return np.result_type(np.min_scalar_type(num_classes), np.min_scalar_type(ignore_index))


def normalize(image: np.ndarray, normalization: PixelNormalization) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] normalized with ``normalization`` (the image processor's:
    `PixelNormalization.from_image_processor`)."""
    return normalization.normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


def multi_hot(label_ids: list[int], num_classes: int) -> torch.Tensor:
    """Foreground ids 1..C -> multi-hot [C] float32."""
    out = torch.zeros(num_classes)
    if label_ids:
        out[torch.as_tensor(label_ids) - 1] = 1.0
    return out
