"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) in pure PyTorch, for refining segmentation maps.

Mean-field inference with a Potts compatibility and two Gaussian edge potentials, as in the DeepLab CRF
that AFA and WeCLIP use for evaluation (`pydensecrf` with `iter_max=10, pos_w=3, pos_xy_std=1, bi_w=4,
bi_xy_std=67, bi_rgb_std=3`):

    k_pos(i, j) = exp(-|p_i - p_j|^2 / (2 pos_xy_std^2))
    k_bi(i, j)  = exp(-|p_i - p_j|^2 / (2 bi_xy_std^2) - |I_i - I_j|^2 / (2 bi_rgb_std^2))
    Q <- softmax(log P + pos_w * N_pos k_pos N_pos Q + bi_w * N_bi k_bi N_bi Q)

where `p` is the pixel position (x, y), `I` the RGB colour (0-255), `P` the input probabilities (clipped at
1e-5, the `unary_from_softmax` default) and `N = diag(k 1)^(-1/2)` the symmetric normalisation that
`pydensecrf` applies by default. Each kernel includes the pixel itself.

Exact filtering is O(N^2) in the number of pixels, so both kernels are approximated:

* `k_pos` is separable: a 1-D convolution along each axis with zero padding, truncated at 4 standard
  deviations. This is exact up to the truncation (relative error < 4e-4).
* `k_bi` uses a permutohedral lattice (Adams, Baek & Davis, Eurographics 2010), the same approximation
  `pydensecrf` uses, written with vectorised tensor ops: the 5-D features (x, y, r, g, b) / std are
  elevated onto the hyperplane of R^6 with the `pydensecrf` scale sqrt(2/3) (d + 1), each pixel is splatted
  with barycentric weights onto the d + 1 vertices of its enclosing simplex, only occupied vertices are
  kept (sorted int64 keys, neighbours found by `searchsorted`), the vertex values are blurred with
  [1/2, 1, 1/2] along the d + 1 lattice directions (unoccupied neighbours count as zero), and pixels read
  back with the same weights. Splat and slice are sparse CSR matrices built once per image batch, so one
  mean-field iteration is two sparse-dense products, six gathers and a separable convolution, on CPU or
  GPU. The effective kernel has a std of about 0.9 of the requested one.

Measured against exact O(N^2) filtering on the 24x24 test image of `tests/test_crf.py` (DeepLab parameters):
the normalised appearance message differs by 0.013 on average (max 0.11) and after 10 iterations the
probabilities by 0.006 on average, with 99.5% of the argmax labels equal (3 of 576 pixels, on the square's
border); with `bi_xy_std=5, bi_rgb_std=20` the labels agree everywhere (mean error 0.0006). A 500x375 image
with 21 classes takes about 12 s on 2 shared CPU cores (lattice construction ~3 s, then ~1 s per iteration).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

__all__ = ["crf_refine_labels", "dense_crf"]

_UNARY_CLIP = 1e-5
"""Probabilities are clipped from below before the log, like `pydensecrf.utils.unary_from_softmax`."""


def _gaussian_taps(std: float, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Unnormalised Gaussian `exp(-k^2 / (2 std^2))` for k in [-radius, radius]: `[2 * radius + 1]`."""
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    return torch.exp(-0.5 * (offsets / std) ** 2)


def _spatial_filter(values: torch.Tensor, std: float) -> torch.Tensor:
    """Sums `values` `[B, C, H, W]` under the kernel `exp(-|dp|^2 / (2 std^2))` over the image domain."""
    height, width = values.shape[-2:]
    radius = max(1, math.ceil(4 * std))
    taps = _gaussian_taps(std, radius, values.dtype, values.device).tolist()
    padded = F.pad(values, (radius, radius, 0, 0))
    rows = sum(tap * padded[..., shift : shift + width] for shift, tap in enumerate(taps))
    padded = F.pad(rows, (0, 0, radius, radius))
    return sum(tap * padded[..., shift : shift + height, :] for shift, tap in enumerate(taps))


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR matrix `[size]` from COO triplets without duplicates."""
    order = torch.argsort(rows * size[1] + cols)
    crow = torch.zeros(size[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=size[0]).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols[order], vals[order], size, check_invariants=False)


class _PermutohedralLattice:
    """Sparse permutohedral lattice approximating `sum_j exp(-|f_i - f_j|^2 / 2) v_j` for unit-std features."""

    def __init__(self, features: torch.Tensor) -> None:
        """Builds splat, blur and slice matrices for `features` `[B, N, d]` (already divided by their std)."""
        batch, num_pixels, dims = features.shape
        device, n1 = features.device, dims + 1
        points = features.reshape(batch * num_pixels, dims)

        # Elevate onto the hyperplane sum(x) = 0 of R^(d+1): orthonormal basis times the lattice scale.
        basis = torch.zeros(n1, dims, dtype=features.dtype, device=device)
        for i in range(dims):
            basis[: i + 1, i] = 1.0
            basis[i + 1, i] = -(i + 1.0)
            basis[:, i] /= math.sqrt((i + 1) * (i + 2))
        elevated = points @ basis.T * (math.sqrt(2.0 / 3.0) * n1)  # [P, d + 1]

        # Closest remainder-0 lattice point and the ordering of the offsets from it.
        rem0 = torch.round(elevated / n1) * n1
        excess = (rem0.sum(dim=1, keepdim=True) / n1).round().long()  # [P, 1]
        order = torch.argsort(elevated - rem0, dim=1, descending=True, stable=True)
        rank = torch.argsort(order, dim=1)  # 0 for the largest offset
        too_high = (excess > 0) & (rank >= n1 - excess)
        too_low = (excess < 0) & (rank < -excess)
        rem0 = rem0 - n1 * too_high + n1 * too_low
        rank = rank + excess - n1 * too_high + n1 * too_low

        # Barycentric weights of the d + 1 vertices of the enclosing simplex.
        offset = (elevated - rem0) / n1
        bary = torch.zeros(points.shape[0], n1 + 1, dtype=features.dtype, device=device)
        bary.scatter_add_(1, dims - rank, offset).scatter_add_(1, dims + 1 - rank, -offset)
        bary[:, 0] += 1.0 + bary[:, n1]
        bary = bary[:, :n1]  # [P, d + 1]

        # Vertex k = rem0 + k, minus (d + 1) where rank > d - k; keyed on its first d coordinates.
        k = torch.arange(n1, device=device)
        vertices = rem0.long()[None] + k[:, None, None] - n1 * (rank[None] > dims - k[:, None, None])
        vertices = vertices[..., :dims]  # [d + 1, P, d]
        low = vertices.flatten(0, 1).amin(dim=0) - n1  # margin: neighbours move a coordinate by <= d
        sizes = (vertices.flatten(0, 1).amax(dim=0) - low + n1 + 1).tolist()
        strides = [math.prod(sizes[i + 1 :]) for i in range(dims)]
        image_index = torch.arange(batch, device=device).repeat_interleave(num_pixels)
        keys = ((vertices - low) * torch.tensor(strides, device=device)).sum(-1)  # [d + 1, P]
        keys = keys + image_index * math.prod(sizes)  # one block of keys per image

        keep = bary > 0  # [P, d + 1]
        pixel = torch.arange(points.shape[0], device=device)[:, None].expand_as(keep)[keep]
        weights = bary[keep]
        vertex_keys, vertex = torch.unique(keys.T[keep], sorted=True, return_inverse=True)
        size = (points.shape[0], vertex_keys.numel())
        self.slice = _csr(pixel, vertex, weights, size)  # [P, M]
        self.splat = _csr(vertex, pixel, weights, size[::-1])  # [M, P]
        # Blur direction j moves every coordinate by +1 and coordinate j by -d (the last one is implicit).
        steps = [sum(strides) - n1 * (strides[j] if j < dims else 0) for j in range(n1)]
        self.neighbours = [self._neighbours(vertex_keys, step) for step in steps]  # d + 1 x [2, M]

    @staticmethod
    def _neighbours(vertex_keys: torch.Tensor, step: int) -> torch.Tensor:
        """`[2, M]` indices of the vertices at key -step and +step; M (a zero row) where unoccupied."""
        num_vertices = vertex_keys.numel()
        neighbour_keys = torch.stack([vertex_keys - step, vertex_keys + step])
        index = torch.searchsorted(vertex_keys, neighbour_keys).clamp_(max=num_vertices - 1)
        return torch.where(vertex_keys[index] == neighbour_keys, index, num_vertices)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Filters `values` `[B * N, C]`, returns `[B * N, C]`."""
        lattice_values = self.splat @ values  # [M, C]
        zero_row = lattice_values.new_zeros(1, lattice_values.shape[1])
        for below, above in self.neighbours:  # blur [1/2, 1, 1/2] along each lattice direction
            padded = torch.cat([lattice_values, zero_row])
            lattice_values = lattice_values + 0.5 * (padded[below] + padded[above])
        return self.slice @ lattice_values


def _bilateral_features(image: torch.Tensor, xy_std: float, rgb_std: float) -> torch.Tensor:
    """`[B, H * W, 5]` features (x / xy_std, y / xy_std, r / rgb_std, g / rgb_std, b / rgb_std)."""
    batch, _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=image.dtype, device=image.device),
        torch.arange(width, dtype=image.dtype, device=image.device),
        indexing="ij",
    )
    position = torch.stack([xs, ys], dim=-1).reshape(1, height * width, 2).expand(batch, -1, -1) / xy_std
    colour = image.flatten(2).transpose(1, 2) / rgb_std
    return torch.cat([position, colour], dim=-1)


def _check_inputs(image: torch.Tensor, probs: torch.Tensor) -> None:
    """Raises ValueError/TypeError on inconsistent `image` `[(B,) 3, H, W]` and `probs` `[(B,) C, H, W]`."""
    if not isinstance(image, torch.Tensor) or not isinstance(probs, torch.Tensor):
        raise TypeError(f"`image` and `probs` must be tensors, got {type(image)} and {type(probs)}.")
    if image.ndim not in (3, 4) or image.ndim != probs.ndim:
        raise ValueError(
            f"`image` [B, 3, H, W] and `probs` [B, C, H, W] (or both unbatched) are expected, got shapes "
            f"{tuple(image.shape)} and {tuple(probs.shape)}."
        )
    if image.shape[-3] != 3:
        raise ValueError(f"`image` must have 3 (RGB) channels, got shape {tuple(image.shape)}.")
    if image.shape[-2:] != probs.shape[-2:] or (image.ndim == 4 and image.shape[0] != probs.shape[0]):
        raise ValueError(
            f"`image` {tuple(image.shape)} and `probs` {tuple(probs.shape)} differ in batch or spatial size."
        )
    if not probs.is_floating_point():
        raise TypeError(f"`probs` must be floating point probabilities, got dtype {probs.dtype}.")


@torch.no_grad()
def dense_crf(
    image: torch.Tensor,
    probs: torch.Tensor,
    num_iters: int = 10,
    pos_w: float = 3.0,
    pos_xy_std: float = 1.0,
    bi_w: float = 4.0,
    bi_xy_std: float = 67.0,
    bi_rgb_std: float = 3.0,
) -> torch.Tensor:
    """Refines class probabilities with a fully connected CRF (mean-field, Potts model).

    Args:
        image: `[B, 3, H, W]` or `[3, H, W]` RGB image, uint8 or float in 0-255.
        probs: `[B, C, H, W]` or `[C, H, W]` softmax probabilities on the same device.
        num_iters: mean-field iterations.
        pos_w, pos_xy_std: weight and spatial std (pixels) of the smoothness kernel.
        bi_w, bi_xy_std, bi_rgb_std: weight, spatial std (pixels) and colour std of the appearance kernel.

    Returns:
        Refined probabilities, same shape and dtype as `probs`, summing to one over the class axis.
    """
    _check_inputs(image, probs)
    if num_iters < 0 or min(pos_xy_std, bi_xy_std, bi_rgb_std) <= 0:
        raise ValueError(
            f"`num_iters` must be >= 0 and the stds > 0, got num_iters={num_iters}, pos_xy_std={pos_xy_std}, "
            f"bi_xy_std={bi_xy_std}, bi_rgb_std={bi_rgb_std}."
        )
    unbatched = probs.ndim == 3
    if unbatched:
        image, probs = image[None], probs[None]
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    batch, num_classes, height, width = probs.shape

    log_unary = probs.to(dtype).clamp_min(_UNARY_CLIP).log()  # -unary, [B, C, H, W]
    ones = torch.ones(batch, 1, height, width, dtype=dtype, device=probs.device)
    pos_norm = _spatial_filter(ones, pos_xy_std).rsqrt()  # [B, 1, H, W]
    grid = _PermutohedralLattice(_bilateral_features(image.to(dtype), bi_xy_std, bi_rgb_std))
    bi_norm = grid(ones.reshape(batch * height * width, 1)).clamp_min(1e-20).rsqrt()  # [B * H * W, 1]

    q = log_unary.softmax(dim=1)
    for _ in range(num_iters):
        pos_message = pos_norm * _spatial_filter(pos_norm * q, pos_xy_std)
        q_pixels = q.permute(0, 2, 3, 1).reshape(batch * height * width, num_classes)
        bi_message = (bi_norm * grid(bi_norm * q_pixels)).reshape(batch, height, width, num_classes)
        energy = log_unary + pos_w * pos_message + bi_w * bi_message.permute(0, 3, 1, 2)
        q = energy.softmax(dim=1)
    q = q.to(probs.dtype)
    return q[0] if unbatched else q


def crf_refine_labels(image: torch.Tensor, probs: torch.Tensor, **crf_kwargs: float) -> torch.Tensor:
    """Label map after `dense_crf`: `LongTensor[B, H, W]` (or `[H, W]` for unbatched inputs)."""
    return dense_crf(image, probs, **crf_kwargs).argmax(dim=-3)
