"""Bilinear resizing (``align_corners=False``, no antialias: `F.interpolate`'s weights) as two matrix products, one
per axis, for the losses' upsampling of logits to the label size.

Equal to `F.interpolate` up to float summation order, and its backward is two matrix products too: PyTorch's own
bilinear backward scatters every output pixel's gradient into four input pixels, with atomic adds on CUDA that
collide when the factor is large (16x from the patch grid: each input pixel takes from ~1,000 output pixels).
The products run in the input's dtype without autocast; with TF32 matmuls allowed on CUDA
(`torch.backends.cuda.matmul.allow_tf32`) they run in TF32, like the model's own products.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=32)
def bilinear_weights(size_out: int, size_in: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[size_out, size_in] interpolation matrix of one axis: source ``(i + 0.5) * size_in / size_out - 0.5``
    clamped at 0, weights ``1 - l`` and ``l`` on its two neighbours (the last pixel repeated at the border).
    Made outside any inference mode (an inference tensor, kept here, could not be saved for a later backward)."""
    with torch.inference_mode(False):
        return _interpolation_matrix(size_out, size_in).to(device=device, dtype=dtype)


def _interpolation_matrix(size_out: int, size_in: int) -> torch.Tensor:
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    rows = torch.arange(size_out)
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights


def _axis_weights(x: torch.Tensor, size_in: tuple[int, int], size: tuple[int, int]):
    # under torch.compile the matrices are traced into the graph, where they are constants: no cache there
    make = bilinear_weights.__wrapped__ if torch.compiler.is_compiling() else bilinear_weights
    return tuple(make(o, i, x.device, x.dtype) for o, i in zip(size, size_in))


def _in_own_dtype(x: torch.Tensor):
    """No autocast: the products run in ``x``'s dtype (an ambient bf16 autocast would round the weights)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, H, W]: ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as
    ``A_h @ x @ A_w^T`` (differentiable; the backward is matrix products)."""
    rows, cols = _axis_weights(x, tuple(x.shape[-2:]), tuple(size))
    with _in_own_dtype(x):
        return rows @ (x @ cols.T)


def upsample_bilinear_channels_last(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] -> [B, H, W, C] contiguous (classes innermost, where per-pixel class reductions are fastest):
    `upsample_bilinear`, permuted."""
    b, c, h, w = x.shape
    rows, cols = _axis_weights(x, (h, w), tuple(size))
    with _in_own_dtype(x):
        tall = rows @ x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # [B, H, w*C]
        return (cols @ tall.reshape(b * size[0], w, c)).view(b, size[0], size[1], c)


def upsample_bilinear_channels_last_adjoint(grad: torch.Tensor, size_in: tuple[int, int]) -> torch.Tensor:
    """The adjoint of `upsample_bilinear_channels_last`: a gradient [B, H, W, C] -> [B, C, h, w]."""
    b, big_h, big_w, c = grad.shape
    rows, cols = _axis_weights(grad, tuple(size_in), (big_h, big_w))
    with _in_own_dtype(grad):
        narrow = cols.T @ grad.reshape(b * big_h, big_w, c)  # [B*H, w, C]
        small = rows.T @ narrow.reshape(b, big_h, size_in[1] * c)  # [B, h, w*C]
    return small.view(b, size_in[0], size_in[1], c).permute(0, 3, 1, 2)
