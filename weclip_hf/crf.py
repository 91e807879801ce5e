"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) in pure PyTorch, for refining segmentation maps.

Mean-field inference with a Potts compatibility and two Gaussian edge potentials, the model that
`pydensecrf` (`DenseCRF2D` with `addPairwiseGaussian` and `addPairwiseBilateral`) implements:

    k_pos(i, j) = exp(-|p_i - p_j|^2 / (2 pos_xy_std^2))
    k_bi(i, j)  = exp(-|p_i - p_j|^2 / (2 bi_xy_std^2) - |I_i - I_j|^2 / (2 bi_rgb_std^2))
    Q <- softmax(log P + pos_w * N_pos k_pos N_pos Q + bi_w * N_bi k_bi N_bi Q)

where `p` is the pixel position (x, y), `I` the RGB colour (0-255), `P` the input probabilities (clipped to
[1e-5, 1], as `pydensecrf.utils.unary_from_softmax` does) and `N = diag(k 1)^(-1/2)` the symmetric
normalisation that `pydensecrf` applies by default. Each kernel includes the pixel itself.

Parameters come as a `CRFParams`. The default, `WECLIP`, is the setting of WeCLIP's evaluation
(`test_msc_flip_voc.py`, `crf_proc`, identical to AFA's): 10 iterations, `pos_w=3, pos_xy_std=3, bi_w=4,
bi_xy_std=64, bi_rgb_std=5`. `DEEPLAB` is DeepLab's setting (`pos_xy_std=1, bi_xy_std=67, bi_rgb_std=3`,
same weights and iterations), which many other WSSS codebases use.

Exact filtering is O(N^2) in the number of pixels, so both kernels are filtered as `pydensecrf` filters
them, on a permutohedral lattice (Adams, Baek & Davis, Eurographics 2010; `weclip_hf.permutohedral_lattice`)
of the features ((x, y) / std for `k_pos`; (x, y) / xy_std and RGB / rgb_std for `k_bi`): each pixel is
splatted onto the vertices of its enclosing simplex, the vertex values are blurred along the lattice
directions, and each pixel reads the result back. The lattice is `pydensecrf`'s; its constant factor
1 / (1 + 2^-d) cancels in the symmetric normalisation. The lattice only approximates the Gaussians (and is not
exactly translation invariant), but it is the model `pydensecrf`, and so every published CRF number, uses.

The lattices are built once per call (`build_lattice`). One mean-field iteration then filters the classes of
both kernels together with `F.embedding_bag`: one call splats `[B*H*W, C]` onto the vertices of both lattices
(the normalisation folded into the weights), calls with bags of three blur each lattice direction, one call
with bags of 6 + 3 corners slices the messages, and `log P` is added to them; the softmax then replaces the
energy a block of pixels at a time. Up to `_CLASS_CHUNK` (32) classes are filtered in one pass; more (a COCO
model's 81) in chunks of at most that many, each written over its classes of Q (a class's filtering reads
only its own column), so that the memory beyond Q and log P stays bounded; the result is the same, bit for
bit. The same code runs on CPU and GPU, batched (each image has its own block of lattice keys, so images
never interact). Where the time goes and how it compares with `pydensecrf`: `examples/benchmark_crf.py`,
BENCHMARKS.md.

Agreement with `pydensecrf` (`tests/test_crf.py`, numbers in BENCHMARKS.md): on the 14 `voc-mini` photos
(513x513, 21 classes), with WeCLIP's and with DeepLab's parameters, for easy (blurred ground truth) and
hard (shifted by 10 px, noisy) soft inputs, the labels are the same on every pixel in 83 of 84 runs and on
all but one pixel in the other; the probabilities differ by float32 rounding (~1e-6 after one iteration;
ten iterations amplify it where classes are nearly tied).
`CRFParams(pos_filter="gaussian")` instead filters the smoothness kernel with the exact Gaussian (separable
convolution, zero padding, truncated at 4 std): not what `pydensecrf` computes, it agrees with it on only
99.95-99.998% (WeCLIP) / 99.92-99.998% (DeepLab) of those photos' labels (mIoU against the ground truth
within 1.1e-4 of `pydensecrf`'s), and it is slower.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .permutohedral_lattice import Lattice, blur, build_lattice

__all__ = ["CRF_PRESETS", "DEEPLAB", "WECLIP", "CRFParams", "crf_refine_labels", "dense_crf"]

_UNARY_CLIP = 1e-5
"""Probabilities are clipped from below before the log, like `pydensecrf.utils.unary_from_softmax`."""

_CLASS_CHUNK = 32
"""Most classes filtered in one pass of a mean-field iteration; more are filtered in chunks (a VOC model's 21
in one, a COCO model's 81 in three), which bounds the memory the filtering needs (docs/scripts.md). Each pass
reads all the lattices' indices, so chunks stay large: 81 classes on a 513x513 photo took 2.35 s in one pass,
2.69 s in three and 3.15 s in six (one CPU thread)."""

_SOFTMAX_ELEMENTS = 2**20
"""Elements (pixels x classes) of each block of the in-place softmax: 4 MB of float32."""


@dataclass(frozen=True)
class CRFParams:
    """Parameters of `dense_crf`; the defaults are WeCLIP's evaluation setting (`WECLIP`)."""

    num_iters: int = 10
    """Mean-field iterations."""
    pos_w: float = 3.0
    """Weight of the smoothness kernel (`compat` of `pydensecrf`'s `addPairwiseGaussian`)."""
    pos_xy_std: float = 3.0
    """Spatial std (pixels) of the smoothness kernel (`sxy`)."""
    bi_w: float = 4.0
    """Weight of the appearance kernel (`compat` of `addPairwiseBilateral`)."""
    bi_xy_std: float = 64.0
    """Spatial std (pixels) of the appearance kernel (`sxy`)."""
    bi_rgb_std: float = 5.0
    """Colour std (0-255 scale) of the appearance kernel (`srgb`)."""
    pos_filter: Literal["lattice", "gaussian"] = "lattice"
    """How the smoothness kernel is filtered: "lattice" as `pydensecrf` does, "gaussian" exactly."""

    def __post_init__(self) -> None:
        if isinstance(self.num_iters, bool) or not isinstance(self.num_iters, int) or self.num_iters < 0:
            raise ValueError(f"`num_iters` must be an int >= 0, got {self.num_iters!r}.")
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        for name in ("pos_w", "bi_w"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if self.pos_filter not in ("lattice", "gaussian"):
            raise ValueError(f"`pos_filter` must be 'lattice' or 'gaussian', got {self.pos_filter!r}.")


WECLIP = CRFParams()
"""WeCLIP's (and AFA's) evaluation: 10 iterations, pos_w 3, pos_xy_std 3, bi_w 4, bi_xy_std 64, rgb_std 5."""

DEEPLAB = CRFParams(pos_xy_std=1.0, bi_xy_std=67.0, bi_rgb_std=3.0)
"""DeepLab's setting: 10 iterations, pos_w 3, pos_xy_std 1, bi_w 4, bi_xy_std 67, bi_rgb_std 3."""

CRF_PRESETS = {"weclip": WECLIP, "deeplab": DEEPLAB}
"""The named settings (`examples/evaluate.py --crf_preset`)."""


# --------------------------------------------------------------------------------------------------
# Mean-field energy, on the lattices of `weclip_hf.permutohedral_lattice`


class _MeanFieldEnergy:
    """`log P + sum_k w_k N_k k_k N_k Q` for every pixel and class: one splat and one slice for all lattices.

    The slice reads the blurred vertex values of every lattice, so each pixel's bag (d_k + 1 corners per
    lattice) sums to its messages; its unary is added after them. A smoothness kernel filtered exactly
    (`exact_smoothness`: its weight and std) adds its message last.
    """

    def __init__(
        self,
        lattices: list[Lattice],
        weights: list[float],
        probs: torch.Tensor,
        exact_smoothness: tuple[float, float] | None = None,
    ) -> None:
        """`probs` `[B, C, H, W]` in the working dtype; the lattices' points are its pixels, row-major."""
        batch, num_classes, height, width = probs.shape
        points, dtype, device = batch * height * width, probs.dtype, probs.device
        num_vertices = sum(lattice.num_vertices for lattice in lattices)
        num_entries = sum(lattice.splat_point.numel() for lattice in lattices)
        num_corners = sum(lattice.vertex.shape[1] for lattice in lattices)
        index_dtype = torch.int32 if num_vertices + points < 2**31 else torch.long
        ones = torch.ones(points, 1, dtype=dtype, device=device)
        # all lattices' splat entries and slice bags, written in place (concatenating copies would double them)
        self.splat_index = torch.empty(num_entries, dtype=index_dtype, device=device)
        self.splat_weight = torch.empty(num_entries, dtype=dtype, device=device)
        self.splat_offsets = torch.empty(num_vertices, dtype=index_dtype, device=device)
        self.slice_index = torch.empty(points, num_corners, dtype=index_dtype, device=device)
        self.slice_weight = torch.empty(points, num_corners, dtype=dtype, device=device)
        self.blur_index, self.blur_weight, self.rows = [], [], []
        start, entry_start, corner_start = 0, 0, 0
        for lattice, weight in zip(lattices, weights):
            entries = slice(entry_start, entry_start + lattice.splat_point.numel())
            corners = slice(corner_start, corner_start + lattice.vertex.shape[1])
            blur_index = [index.to(index_dtype) for index in lattice.blur_index]
            splat_point = self.splat_index[entries].copy_(lattice.splat_point)
            splat_start = self.splat_offsets[start : start + lattice.num_vertices].copy_(
                lattice.splat_offsets
            )
            mass = F.embedding_bag(
                splat_point, ones, splat_start, mode="sum", per_sample_weights=lattice.splat_bary
            )
            splat_start += entry_start
            mass = blur(mass, blur_index, lattice.blur_weight)
            vertex = lattice.vertex.to(index_dtype)
            norm = F.embedding_bag(vertex, mass, mode="sum", per_sample_weights=lattice.bary)
            norm = (norm[:, 0] + 1e-20).rsqrt()  # [P]
            torch.mul(
                lattice.splat_bary, norm.index_select(0, lattice.splat_point), out=self.splat_weight[entries]
            )
            torch.add(vertex, start, out=self.slice_index[:, corners])
            torch.mul(lattice.bary, weight * norm[:, None], out=self.slice_weight[:, corners])
            self.blur_index.append(blur_index)
            self.blur_weight.append(lattice.blur_weight)
            self.rows.append(slice(start, start + lattice.num_vertices))
            start += lattice.num_vertices
            entry_start, corner_start = entries.stop, corners.stop
        log_unary = torch.empty(points, num_classes, dtype=dtype, device=device)  # [P, C], pixel-major
        log_unary.view(batch, height, width, num_classes).copy_(probs.permute(0, 2, 3, 1))
        self.log_unary = log_unary.clamp_(_UNARY_CLIP, 1.0).log_()
        self.exact_smoothness = exact_smoothness
        if exact_smoothness is not None:
            ones = torch.ones(batch, 1, height, width, dtype=dtype, device=device)
            self.exact_norm = _spatial_filter(ones, exact_smoothness[1]).rsqrt()  # [B, 1, H, W]

    def __call__(self, q: torch.Tensor, classes: slice = slice(None)) -> torch.Tensor:
        """Energies `[P, k]` of the k classes `classes` for their distribution `q` `[P, k]`.

        Each class is filtered on its own, so a chunk's energies are those of the same classes filtered
        with all the others (bitwise: `F.embedding_bag` sums each column in bag order whatever the columns).
        """
        values = F.embedding_bag(
            self.splat_index, q, self.splat_offsets, mode="sum", per_sample_weights=self.splat_weight
        )  # [M_1 + M_2 + ..., k]
        for rows, blur_index, blur_weight in zip(self.rows, self.blur_index, self.blur_weight):
            values[rows] = blur(values[rows], blur_index, blur_weight)
        energy = F.embedding_bag(self.slice_index, values, mode="sum", per_sample_weights=self.slice_weight)
        energy += self.log_unary[:, classes]
        if self.exact_smoothness is not None:
            batch, _, height, width = self.exact_norm.shape
            q_maps = q.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
            message = self.exact_norm * _spatial_filter(self.exact_norm * q_maps, self.exact_smoothness[1])
            energy += self.exact_smoothness[0] * message.permute(0, 2, 3, 1).reshape(q.shape)
        return energy


# --------------------------------------------------------------------------------------------------
# Exact smoothness kernel (option)


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


# --------------------------------------------------------------------------------------------------
# Mean-field iterations


def _class_chunks(num_classes: int) -> list[slice]:
    """Fewest consecutive ranges of at most `_CLASS_CHUNK` classes covering `num_classes`, sizes within 1."""
    chunks = math.ceil(num_classes / _CLASS_CHUNK)
    bounds = [num_classes * i // chunks for i in range(chunks + 1)]
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


def _energies(energy_of: _MeanFieldEnergy, q: torch.Tensor) -> torch.Tensor:
    """Energies `[P, C]` for the distribution `q` `[P, C]`: a new tensor of all classes at once, or, for more
    than `_CLASS_CHUNK` classes, `q` itself, overwritten chunk by chunk (a class's energy reads only its own
    column of `q`), so that only a chunk's messages are held besides it."""
    chunks = _class_chunks(q.shape[1])
    if len(chunks) == 1:
        return energy_of(q)
    for classes in chunks:
        q[:, classes] = energy_of(q[:, classes].contiguous(), classes)
    return q


def _softmax_(energy: torch.Tensor) -> torch.Tensor:
    """`energy` `[P, C]` replaced by its softmax over the classes, a block of pixels at a time."""
    for block in energy.split(max(1, _SOFTMAX_ELEMENTS // energy.shape[1])):
        block.copy_(block.softmax(dim=1))
    return energy


# --------------------------------------------------------------------------------------------------
# Public API


def _positions(batch: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[B, H * W, 2]` pixel positions (x, y), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1).reshape(1, height * width, 2).expand(batch, -1, -1)


def _check_inputs(image: torch.Tensor, probs: torch.Tensor) -> None:
    """Raises ValueError/TypeError on inconsistent `image` `[(B,) 3, H, W]` and `probs` `[(B,) C, H, W]`."""
    if not isinstance(image, torch.Tensor) or not isinstance(probs, torch.Tensor):
        raise TypeError(f"`image` and `probs` must be tensors, got {type(image)} and {type(probs)}.")
    # the CRF is not differentiable; reading values of a tensor that needs gradients makes torch warn
    image, probs = image.detach(), probs.detach()
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
    if probs.numel() == 0:
        raise ValueError(f"`probs` must have at least one class and pixel, got shape {tuple(probs.shape)}.")
    if image.device != probs.device:
        raise ValueError(f"`image` is on {image.device} and `probs` on {probs.device}; use one device.")
    # one NaN passes every comparison below, and the lattice spreads it to every pixel (all labelled class 0)
    for name, tensor in (("probs", probs), ("image", image)):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"`{name}` holds {bad} NaN or infinite value(s) of {tensor.numel()}.")
    low, high = (float(v) for v in probs.aminmax())
    # a softmax rounded to bfloat16 sums to 1 within its precision (~3e-3), and keeps that error when cast to
    # float32 or float16 afterwards: the tolerance is bfloat16's whatever the dtype given
    tolerance = 1e-2
    if low < 0 or high > 1 + 1e-4 or float((probs.float().sum(dim=-3) - 1).abs().max()) > tolerance:
        hint = (
            "logits need `.softmax(dim=-3)` first" if low < 0 or high > 1 + 1e-4 else "they do not sum to 1"
        )
        raise ValueError(
            f"`probs` must be probabilities (0-1, summing to 1 over the classes), got values in [{low:.6g}, "
            f"{high:.6g}]: {hint}."
        )
    if image.numel():
        image_low, image_high = (float(v) for v in image.aminmax())
        if image_low < 0 or image_high > 255:  # a normalized image, or 16-bit values: another colour scale
            raise ValueError(
                f"`image` must hold RGB values in 0-255 (uint8, or floats of that range), got values in "
                f"[{image_low:.6g}, {image_high:.6g}]: a normalized image goes back with "
                "`PixelNormalization.denormalize`, a 16-bit one is divided by 257."
            )
    if image.is_floating_point() and image.numel() and image_high <= 1.0:
        warnings.warn(
            "`image` holds values in [0, 1]: the CRF reads 0-255 RGB (the bilateral kernel's colour scale); "
            "multiply by 255 (a black image may ignore this).",
            stacklevel=4,
        )


def _resolve_params(params: CRFParams, overrides: dict[str, Any]) -> CRFParams:
    """`params` with the keyword `overrides` applied; unknown names raise TypeError."""
    if not isinstance(params, CRFParams):
        raise TypeError(f"`params` must be a CRFParams (e.g. crf.WECLIP or crf.DEEPLAB), got {type(params)}.")
    unknown = set(overrides) - {field.name for field in dataclasses.fields(CRFParams)}
    if unknown:
        names = [field.name for field in dataclasses.fields(CRFParams)]
        raise TypeError(f"Unknown CRF parameters {sorted(unknown)}; CRFParams has {names}.")
    return dataclasses.replace(params, **overrides) if overrides else params


@torch.no_grad()
def _mean_field(image: torch.Tensor, probs: torch.Tensor, params: CRFParams) -> torch.Tensor:
    """Refined probabilities `[B * H * W, C]` (pixel-major) for batched `image` and `probs`."""
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    batch, num_classes, height, width = probs.shape
    device = probs.device
    if params.num_iters == 0:
        log_unary = probs.permute(0, 2, 3, 1).reshape(-1, num_classes).to(dtype)
        return log_unary.clamp(_UNARY_CLIP, 1.0).log().softmax(dim=1)

    position = _positions(batch, height, width, dtype, device)
    colour = image.to(dtype).flatten(2).transpose(1, 2)  # [B, H * W, 3]
    lattices = [build_lattice(torch.cat([position / params.bi_xy_std, colour / params.bi_rgb_std], dim=-1))]
    weights, exact_smoothness = [params.bi_w], None
    if params.pos_filter == "lattice":
        lattices.append(build_lattice(position / params.pos_xy_std))
        weights.append(params.pos_w)
    else:
        exact_smoothness = (params.pos_w, params.pos_xy_std)
    energy_of = _MeanFieldEnergy(lattices, weights, probs.to(dtype), exact_smoothness)
    del lattices, position, colour  # the energy holds what it needs of them (int32 indices): free the rest

    q = energy_of.log_unary.softmax(dim=1)  # [P, C]
    for _ in range(params.num_iters):
        q = _softmax_(_energies(energy_of, q))
    return q


def _refined_probs(
    image: torch.Tensor, probs: torch.Tensor, params: CRFParams, overrides: dict[str, Any]
) -> tuple[torch.Tensor, bool]:
    """`dense_crf`'s refined probabilities `[B, H, W, C]` (float32/64); whether the inputs are unbatched."""
    params = _resolve_params(params, overrides)
    _check_inputs(image, probs)
    unbatched = probs.ndim == 3
    if unbatched:
        image, probs = image[None], probs[None]
    batch, num_classes, height, width = probs.shape
    return _mean_field(image, probs, params).view(batch, height, width, num_classes), unbatched


def dense_crf(
    image: torch.Tensor, probs: torch.Tensor, params: CRFParams = WECLIP, **overrides: Any
) -> torch.Tensor:
    """Refines class probabilities with a fully connected CRF (mean-field, Potts model).

    Args:
        image: `[B, 3, H, W]` or `[3, H, W]` RGB image, uint8 or float in 0-255 (from normalized pixel values:
            `PixelNormalization.denormalize` with the statistics of the model's image processor).
        probs: `[B, C, H, W]` or `[C, H, W]` softmax probabilities on the same device.
        params: `CRFParams`; `WECLIP` (default) or `DEEPLAB`, or your own.
        **overrides: fields of `CRFParams` replacing those of `params`, e.g. `num_iters=5`.

    Returns:
        Refined probabilities, same shape and dtype as `probs`, summing to one over the class axis (not
        differentiable: no gradient flows back to `probs`).
    """
    q, unbatched = _refined_probs(image, probs, params, overrides)
    q = q.permute(0, 3, 1, 2).to(probs.dtype).contiguous()  # [B, C, H, W]
    return q[0] if unbatched else q


def crf_refine_labels(
    image: torch.Tensor, probs: torch.Tensor, params: CRFParams = WECLIP, **overrides: Any
) -> torch.Tensor:
    """Label map after `dense_crf`: `LongTensor[B, H, W]` (or `[H, W]` for unbatched inputs)."""
    q, unbatched = _refined_probs(image, probs, params, overrides)
    labels = q.argmax(dim=-1)  # [B, H, W]
    return labels[0] if unbatched else labels
