"""PAR's two passes as Triton kernels (CUDA), one launch each: the neighbour weights (`weclip_hf.par.par_affinity`)
and one iteration (`weclip_hf.par.par_iteration`). Every pixel reads its 8*D ring neighbours (replicate padding =
clamped coordinates) from the cache and writes its own outputs once, where the eager path makes ~150 (weights)
and 8*D (iteration) passes over whole maps: launch-bound on a GPU at small batches, memory-bound at large ones.

Used for float32 CUDA tensors when Triton is installed (it ships with PyTorch's CUDA wheels). The same kernels
run on a CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported), which is
how the tests check them without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch: the eager path runs
    triton = None


# Triton takes its interpreter or its compiler when the kernels are defined, at import: read the switch once then
INTERPRETING = triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(tensor: torch.Tensor) -> bool:
    """Whether the kernels take ``tensor``: float32, no gradient asked for (the kernels have no backward), Triton
    installed, and a CUDA device that Triton compiles for (compute capability 7.0 or newer, as `torch.compile`
    requires; or Triton's interpreter, on any device)."""
    if triton is None or tensor.dtype != torch.float32 or (tensor.requires_grad and torch.is_grad_enabled()):
        return False
    if INTERPRETING:
        return True
    return tensor.device.type == "cuda" and _compiles_for(tensor.device.index)


@functools.cache
def _compiles_for(device_index: int | None) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 7


if triton is not None:

    @triton.jit
    def _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n):
        """[BLOCK] flat index of ring neighbour ``n`` of each pixel, coordinates clamped (replicate padding)."""
        dy = tl.load(offsets_ptr + n)
        dx = tl.load(offsets_ptr + neighbours + n)
        return tl.minimum(tl.maximum(row + dy, 0), height - 1) * width + tl.minimum(
            tl.maximum(col + dx, 0), width - 1
        )

    @triton.jit
    def _gather(values_ptr, bases, index, mask):
        """[ROWS, BLOCK] values at ``index`` of the planes starting at ``bases``."""
        return tl.load(values_ptr + bases[:, None] + index[None, :], mask=mask, other=0.0)

    @triton.jit
    def _colour_distance(image_ptr, bases, index, mask, centre, scale, channels):
        """[BLOCK] channel mean of ``(I_n - I)^2 / scale``: PAR's colour distance to the neighbour at ``index``."""
        diff = _gather(image_ptr, bases, index, mask) - centre
        return tl.sum(diff * diff / scale, axis=0) / channels

    @triton.jit
    def _par_affinity_kernel(
        image_ptr,
        offsets_ptr,
        position_ptr,
        out_ptr,
        batch,
        channels,
        height,
        width,
        neighbours,
        temperature,
        pos_weight,
        CHANNELS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """out[n, b, p] for a block of pixels p of image b: softmax over n of the negated colour distance (the
        unbiased neighbour std per channel, two passes as the eager path) plus ``pos_weight * position[n]``."""
        image = tl.program_id(1)
        pixels = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        plane = height * width
        in_image = pixels < plane
        row = pixels // width
        col = pixels % width
        channel = tl.arange(0, CHANNELS)
        bases = (image * channels + channel).to(tl.int64) * plane
        mask = (channel < channels)[:, None] & in_image[None, :]
        centre = _gather(image_ptr, bases, pixels, mask)
        total = tl.zeros((CHANNELS, BLOCK), dtype=tl.float32)
        for n in range(neighbours):
            total += _gather(
                image_ptr, bases, _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n), mask
            )
        mean = total / neighbours
        squares = tl.zeros((CHANNELS, BLOCK), dtype=tl.float32)
        for n in range(neighbours):
            index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
            deviation = _gather(image_ptr, bases, index, mask) - mean
            squares += deviation * deviation
        scale = (tl.sqrt(squares / (neighbours - 1)) + 1e-8) * temperature
        scale = scale * scale
        # softmax over the neighbours of -distance, shifted by the smallest distance (three passes, recomputing the
        # distances from the cache rather than keeping 8*D of them)
        smallest = tl.full((BLOCK,), float("inf"), dtype=tl.float32)
        for n in range(neighbours):
            index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
            smallest = tl.minimum(
                smallest, _colour_distance(image_ptr, bases, index, mask, centre, scale, channels)
            )
        norm = tl.zeros((BLOCK,), dtype=tl.float32)
        for n in range(neighbours):
            index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
            norm += tl.exp(
                smallest - _colour_distance(image_ptr, bases, index, mask, centre, scale, channels)
            )
        for n in range(neighbours):
            index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
            colour = (
                tl.exp(smallest - _colour_distance(image_ptr, bases, index, mask, centre, scale, channels))
                / norm
            )
            weight = colour + pos_weight * tl.load(position_ptr + n)
            tl.store(out_ptr + (n * batch + image).to(tl.int64) * plane + pixels, weight, mask=in_image)

    @triton.jit
    def _par_iteration_kernel(
        scores_ptr,
        weights_ptr,
        offsets_ptr,
        out_ptr,
        batch,
        maps,
        height,
        width,
        neighbours,
        MAPS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """out[b, c, p] = sum_n weights[n, b, p] * scores[b, c, clamp(p + offset_n)], for a block of pixels p of
        image b and a block of MAPS of its maps c (the third grid axis: at most 16 maps per program, so that the
        accumulator stays in registers for any class count)."""
        image = tl.program_id(1)
        pixels = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        plane = height * width
        in_image = pixels < plane
        row = pixels // width
        col = pixels % width
        map_index = tl.program_id(2) * MAPS + tl.arange(0, MAPS)
        bases = (image * maps + map_index).to(tl.int64) * plane
        mask = (map_index < maps)[:, None] & in_image[None, :]
        acc = tl.zeros((MAPS, BLOCK), dtype=tl.float32)
        for n in range(neighbours):
            weight = tl.load(weights_ptr + (n * batch + image).to(tl.int64) * plane + pixels, mask=in_image)
            index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
            acc += weight[None, :] * _gather(scores_ptr, bases, index, mask)
        tl.store(out_ptr + bases[:, None] + pixels[None, :], acc, mask=mask)


def _check_launch(
    data: torch.Tensor, other: torch.Tensor, shape: tuple[int, ...], offsets: torch.Tensor, name: str
) -> None:
    """The kernels index without bounds checks: refuse a wrongly shaped, typed or placed input before a launch."""
    if data.dim() != 4 or tuple(other.shape) != shape or other.dtype != torch.float32:
        raise ValueError(
            f"PAR kernel: {name} of shape {tuple(other.shape)} / {other.dtype}, expected {shape} float32"
        )
    if offsets.shape[0] != 2 or offsets.dtype != torch.int32:
        raise ValueError(
            f"PAR kernel: offsets of shape {tuple(offsets.shape)} / {offsets.dtype}, expected [2, N] int32"
        )
    if not (other.device == offsets.device == data.device):
        raise ValueError(f"PAR kernel: inputs on {data.device}, {other.device} and {offsets.device}")


def _on_device(tensor: torch.Tensor):
    """The tensor's CUDA device as the current one while a kernel launches (Triton launches on the current
    device); nothing elsewhere. (The launches are also named for torch.profiler, whose operator rows would not
    show a kernel launched outside an aten operator.)"""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def par_iteration_triton(scores: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`weclip_hf.par.par_iteration` in one kernel launch: scores [B, C, H, W] float32, weights [8*D, B, H, W]
    float32 from `par_affinity`, offsets [2, 8*D] int32 (row, col) of the neighbours in the weights' order ->
    [B, C, H, W]."""
    b, c, h, w = scores.shape
    _check_launch(scores, weights, (offsets.shape[1], b, h, w), offsets, "weights")
    scores = scores.contiguous()
    weights = weights.contiguous()
    out = torch.empty_like(scores)
    if out.numel() == 0:  # no map (or no pixel): nothing to launch
        return out
    block = 256
    with _on_device(scores), torch.profiler.record_function("weclip::par_iteration_kernel"):
        maps = min(triton.next_power_of_2(c), 16)
        _par_iteration_kernel[(triton.cdiv(h * w, block), b, triton.cdiv(c, maps))](
            scores, weights, offsets, out, b, c, h, w, offsets.shape[1], MAPS=maps, BLOCK=block
        )
    return out


def par_affinity_triton(
    image: torch.Tensor, offsets: torch.Tensor, position: torch.Tensor, temperature: float, pos_weight: float
) -> torch.Tensor:
    """`weclip_hf.par.par_affinity` in one kernel launch: image [B, C, H, W] float32, offsets [2, 8*D] int32,
    position [8*D] float32 (the position softmax) -> weights [8*D, B, H, W]."""
    b, c, h, w = image.shape
    k = offsets.shape[1]
    _check_launch(image, position, (k,), offsets, "position")
    out = image.new_empty(k, b, h, w)
    if out.numel() == 0:  # no image (or no pixel): nothing to launch
        return out
    block = 128
    with _on_device(image), torch.profiler.record_function("weclip::par_affinity_kernel"):
        _par_affinity_kernel[(triton.cdiv(h * w, block), b)](
            image.contiguous(),
            offsets,
            position,
            out,
            b,
            c,
            h,
            w,
            k,
            temperature,
            pos_weight,
            CHANNELS=triton.next_power_of_2(c),
            BLOCK=block,
        )
    return out
