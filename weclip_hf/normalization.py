"""Pixel normalization, defined once: the statistics and the arithmetic that the image processor, the training
and evaluation datasets, the CRF and the training overlays share.

WeCLIP normalizes 0-255 pixel values with ImageNet statistics on that scale, ``(x - mean) / std`` with mean
(123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375), computed in float64 (NumPy on a uint8 image and
Python floats) and rounded once to float32 in its evaluation; its training transforms normalise the float32 crop
in float32. `PixelNormalization` computes it in float64 everywhere, so it gives the official evaluation pixels bit
for bit (float32 arithmetic, with the std ``float32(0.224) * 255 = 57.120003``, was 1 ulp off on most of them) and
the training crops' within 1 ulp (2.4e-7).

`WeCLIPImageProcessor` keeps transformers' units (``image_mean``/``image_std`` apply to pixels rescaled by
``rescale_factor``, [0, 1] for 1/255); `PixelNormalization.from_image_processor` turns its settings into
statistics on the pixel values it reads (0-255 for uint8 images), decimal-exactly: (0.485, 0.456, 0.406) /
(0.229, 0.224, 0.225) with 1/255 give the official constants above, not ``0.224 * 255 = 57.120000000000005``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from decimal import Decimal

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # [0, 1] units (the image processor's); x 255 = the official statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's own statistics, [0, 1] units
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZE_BLOCK_VALUES = 1 << 22  # float64 values `PixelNormalization.normalize` holds at once (32 MiB)


def to_pixel_units(values, unit: float) -> tuple[float, ...]:
    """Statistics in rescaled units -> pixel units: each value's decimal form times ``unit`` (1 /
    rescale_factor), rounded once to float64 (0.224 x 255 -> 57.12, the official constant)."""
    return tuple(float(Decimal(repr(float(v))) * Decimal(repr(float(unit)))) for v in values)


@dataclass(frozen=True)
class PixelNormalization:
    """``(x - mean) / std`` per channel on pixel values ``x`` (0-255 for uint8 images).

    Args:
        mean: one value per channel, or one for all channels, in pixel units.
        std: the same, positive.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.mean or not self.std or any(v <= 0 for v in self.std):
            raise ValueError(
                f"mean and std need at least one value, std positive; got {self.mean}, {self.std}."
            )

    @classmethod
    def from_image_processor(cls, processor) -> PixelNormalization:
        """What a `WeCLIPImageProcessor` (or any object with its rescale and normalize settings) does to the
        pixel values it reads: its ``image_mean``/``image_std`` in pixel units, or a plain rescale (``x *
        rescale_factor``) without ``do_normalize``, or the identity without either."""
        return cls.from_settings(
            processor.do_rescale,
            processor.rescale_factor,
            processor.do_normalize,
            processor.image_mean,
            processor.image_std,
        )

    @classmethod
    def from_settings(
        cls, do_rescale: bool, rescale_factor: float, do_normalize: bool, image_mean, image_std
    ) -> PixelNormalization:
        """`from_image_processor` on settings given one by one (the processor's per-call options)."""
        unit = 1.0 / rescale_factor if do_rescale else 1.0
        if not do_normalize:
            return cls((0.0,), (unit,))
        mean = [image_mean] if isinstance(image_mean, numbers.Real) else image_mean
        std = [image_std] if isinstance(image_std, numbers.Real) else image_std
        return cls(to_pixel_units(mean, unit), to_pixel_units(std, unit))

    def _statistics(self, channels: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as [C, 1, 1] tensors for images of ``channels`` channels."""
        if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
            raise ValueError(
                f"image_mean / image_std: the normalization's mean {self.mean} and std {self.std} do not fit "
                f"images of {channels} channel(s) (they need one value, or one per channel). The processor's "
                "do_convert_rgb (on by default) makes every image 3-channel RGB."
            )
        mean = torch.tensor(self.mean, dtype=dtype, device=device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=device).view(-1, 1, 1)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values [..., C, H, W] (uint8 or float) -> float32 normalized values, computed in float64 and
        rounded once (the official arithmetic), a block of rows at a time (float64 temporaries of at most
        ``NORMALIZE_BLOCK_VALUES`` values: a 24 MP photo needs its float32 result, not ~2 GB). Computed on the
        CPU or a device with float64."""
        mean, std = self._statistics(pixels.shape[-3], torch.float64, pixels.device)
        out = torch.empty_like(pixels, dtype=torch.float32)
        height = pixels.shape[-2]
        rows = max(1, NORMALIZE_BLOCK_VALUES * height // max(1, pixels.numel()))
        for top in range(0, height, rows):
            block = pixels[..., top : top + rows, :].to(torch.float64)  # a view of a float64 input
            out[..., top : top + rows, :] = (block - mean) / std
        return out

    def denormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalized images [..., C, H, W] -> uint8 pixel values (rounded, clipped to 0-255), on their
        device: the image `normalize` was given, for uint8 images at their size."""
        x = pixel_values.to(torch.float32)
        mean, std = self._statistics(x.shape[-3], x.dtype, x.device)
        return (x * std + mean).round_().clamp_(0, 255).to(torch.uint8)


IMAGENET_NORMALIZATION = PixelNormalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
"""WeCLIP's (official) normalization: ImageNet statistics on 0-255 pixels; `WeCLIPImageProcessor`'s default."""
CLIP_NORMALIZATION = PixelNormalization(
    mean=to_pixel_units(CLIP_MEAN, 255), std=to_pixel_units(CLIP_STD, 255)
)
"""CLIP's own statistics on 0-255 pixels (an option; not what WeCLIP was trained with)."""


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_NORMALIZATION",
    "CLIP_NORMALIZATION",
    "PixelNormalization",
    "to_pixel_units",
]
