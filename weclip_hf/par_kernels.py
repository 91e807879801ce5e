"""PAR's two passes as Triton kernels: the neighbour weights (`weclip_hf.par.par_affinity`) and one iteration
(`weclip_hf.par.par_iteration`). Every pixel reads its 8*D ring neighbours (replicate padding = clamped coordinates)
from the cache and writes its own outputs once. Imported on first use by `weclip_hf.par_triton` (which checks and
launches them), so that a run that never takes them never defines them.

Triton defines these as compiled or as interpreted functions (``TRITON_INTERPRET=1``) when this module is imported.
"""

import subprocess

try:  # an import in a try block is one transformers does not require of a trust_remote_code folder's users
    import triton
    import triton.language as tl
    from triton.runtime import errors as triton_errors
except ImportError:  # without Triton `weclip_hf.par_triton.kernels` finds none: the eager path runs
    raise

# What a launch raises where Triton cannot build or load the kernels here: no C compiler or Python headers for its
# launcher, an unwritable cache, no driver, a GPU that its bundled ptxas does not know (a RuntimeError before
# Triton 3.2), too little shared memory. Not an error in the kernels' source (CompilationError, or InterpreterError
# under the interpreter) nor a call that does not fit them (TypeError, ValueError): those are bugs to see.
LAUNCH_ERRORS = (
    RuntimeError,
    OSError,
    subprocess.SubprocessError,
    triton_errors.OutOfResources,
    getattr(triton_errors, "PTXASError", RuntimeError),
)


@triton.jit
def _pixel_block(height, width, BLOCK: tl.constexpr):
    """This program's image (grid axis 1) and block of BLOCK flat pixel indices (grid axis 0), with the plane size,
    the in-image mask and each pixel's row and column."""
    image = tl.program_id(1)
    pixels = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    plane = height * width
    return image, pixels, plane, pixels < plane, pixels // width, pixels % width


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
def par_affinity_kernel(
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
    image, pixels, plane, in_image, row, col = _pixel_block(height, width, BLOCK)
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
        norm += tl.exp(smallest - _colour_distance(image_ptr, bases, index, mask, centre, scale, channels))
    for n in range(neighbours):
        index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
        colour = (
            tl.exp(smallest - _colour_distance(image_ptr, bases, index, mask, centre, scale, channels)) / norm
        )
        weight = colour + pos_weight * tl.load(position_ptr + n)
        tl.store(out_ptr + (n * batch + image).to(tl.int64) * plane + pixels, weight, mask=in_image)


@triton.jit
def par_iteration_kernel(
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
    image, pixels, plane, in_image, row, col = _pixel_block(height, width, BLOCK)
    map_index = tl.program_id(2) * MAPS + tl.arange(0, MAPS)
    bases = (image * maps + map_index).to(tl.int64) * plane
    mask = (map_index < maps)[:, None] & in_image[None, :]
    acc = tl.zeros((MAPS, BLOCK), dtype=tl.float32)
    for n in range(neighbours):
        weight = tl.load(weights_ptr + (n * batch + image).to(tl.int64) * plane + pixels, mask=in_image)
        index = _neighbour_index(offsets_ptr, row, col, height, width, neighbours, n)
        acc += weight[None, :] * _gather(scores_ptr, bases, index, mask)
    tl.store(out_ptr + bases[:, None] + pixels[None, :], acc, mask=mask)
