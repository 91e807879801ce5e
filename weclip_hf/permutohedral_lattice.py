"""Permutohedral lattice (Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral
Lattice", Eurographics 2010): fast approximate Gaussian filtering of values at N points with d-dimensional
features, as `pydensecrf` filters the dense CRF's kernels (`weclip_hf.crf`).

It approximates `sum_j exp(-|f_i - f_j|^2 / 2) v_j` for the features `f` (already divided by their std), up to
the lattice's constant factor 1 / (1 + 2^-d): the features are elevated onto the hyperplane of R^(d+1) with
the scale sqrt(2/3) (d + 1), each point is splatted with barycentric weights onto the d + 1 vertices of its
enclosing simplex (all of them are lattice points, even at weight 0, as in `pydensecrf`), the vertex values
are blurred with [1/2, 1, 1/2] along the d + 1 lattice directions in turn (unoccupied neighbours count as
zero), and each point reads the result back with the same weights. Rounding and tie-breaking follow
`pydensecrf`, so the lattice is the same. The lattice only approximates the Gaussian (and is not exactly
translation invariant).

`build_lattice` builds it once for the points of a batch of images (vertices found by sorting int64 keys,
first per simplex, then per corner; neighbours by `searchsorted`; each image has its own block of keys, so
images never interact): a `Lattice` holds the splat, blur and slice indices and weights as `F.embedding_bag`
reads them, and `blur` blurs vertex values `[M, C]` along every lattice direction. The splat and the slice are
the caller's `F.embedding_bag` calls (`weclip_hf.crf` splats and slices the classes on all its lattices in one
call each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["Lattice", "blur", "build_lattice"]


@dataclass
class Lattice:
    """Splat, blur and slice structure of one permutohedral lattice over `P` points (all images)."""

    num_vertices: int
    vertex: torch.Tensor
    """`[P, d + 1]` vertex index of each point's simplex corners (the slice)."""
    bary: torch.Tensor
    """`[P, d + 1]` barycentric weights of those corners."""
    splat_point: torch.Tensor
    """`[P * (d + 1)]` point of each (point, corner) entry, the entries grouped by vertex (the splat)."""
    splat_bary: torch.Tensor
    """`[P * (d + 1)]` barycentric weight of the same entries."""
    splat_offsets: torch.Tensor
    """`[M]` start of each vertex's group of entries."""
    blur_index: list[torch.Tensor]
    """d + 1 x `[M, 3]` (neighbour below, self, neighbour above); self where the neighbour is unoccupied."""
    blur_weight: list[torch.Tensor]
    """d + 1 x `[M, 3]` (1/2, 1, 1/2), 0 for unoccupied neighbours."""


def _elevate(points: torch.Tensor) -> torch.Tensor:
    """`[d + 1, P]` coordinates of `points` `[P, d]` on the hyperplane sum(x) = 0 of R^(d+1), scaled by
    sqrt(2/3) (d + 1): y_0 = sum_k c_k, y_j = sum_(k >= j) c_k - j c_(j-1) with c_k = x_k sqrt(2/3) (d + 1) /
    sqrt((k + 1)(k + 2)). Elementwise and summed like pydensecrf (no matmul, so no TF32 on a GPU)."""
    dims = points.shape[1]
    scale = [math.sqrt(2.0 / 3.0) * (dims + 1) / math.sqrt((k + 1) * (k + 2)) for k in range(dims)]
    scaled = points.T * torch.tensor(scale, dtype=points.dtype, device=points.device)[:, None]  # [d, P]
    suffix = scaled.flip(0).cumsum(dim=0).flip(0)  # sum_(k >= j) c_k
    steps = torch.arange(1, dims, dtype=points.dtype, device=points.device)[:, None]
    return torch.cat([suffix[:1], suffix[1:] - steps * scaled[:-1], -dims * scaled[-1:]])


def _group_starts(sorted_columns: list[torch.Tensor]) -> torch.Tensor:
    """`[n]` bool: True where a run of equal rows of the sorted `sorted_columns` (each `[n]`) begins."""
    first = torch.zeros_like(sorted_columns[0], dtype=torch.bool)
    first[0] = True
    for values in sorted_columns:
        first[1:] |= values[1:] != values[:-1]
    return first


def _expand_runs(values: torch.Tensor, starts: torch.Tensor, total: int) -> torch.Tensor:
    """`[total]`: `values[i]` from `starts[i]` (increasing, `starts[0] == 0`) up to the next start."""
    steps = torch.zeros(total, dtype=values.dtype, device=values.device)
    steps[starts] = torch.diff(values, prepend=values.new_zeros(1))
    return steps.cumsum_(dim=0)


def _sort_by(columns: list[torch.Tensor], ranges: list[int]) -> torch.Tensor:
    """Stable lexicographic order of int64 `columns` (values in [0, range)), first column first."""
    if math.prod(ranges) < 2**62:  # one combined key
        key = columns[0]
        for column, size in zip(columns[1:], ranges[1:]):
            key = key * size + column
        return key.sort(stable=True).indices
    order = columns[-1].sort(stable=True).indices
    for column in columns[-2::-1]:
        order = order[column[order].sort(stable=True).indices]
    return order


class _EnclosingSimplices(NamedTuple):
    """The simplex of the lattice that encloses each point: its corner 0, the ranks and the weights."""

    rem0: torch.Tensor
    """`[d + 1, P]` corner 0 of each point's simplex, a remainder-0 lattice point (integer-valued floats)."""
    rank: torch.Tensor
    """`[d + 1, P]` int64 rank of each coordinate's offset from `rem0` (0 = largest)."""
    bary: torch.Tensor
    """`[P, d + 1]` barycentric weights of the simplex corners."""


class _LatticeKeys(NamedTuple):
    """int64 keys of lattice points: the first d coordinates in mixed radix, one block of keys per image."""

    corner0: torch.Tensor
    """`[P]` key of each point's corner 0."""
    strides: list[int]
    """d + 1 key strides of the coordinates (the last coordinate is implicit: stride 0)."""
    num_keys: int
    """Keys of all images together (the range of `corner0`)."""


class _Simplices(NamedTuple):
    """The occupied simplices: points sharing corner 0 and the ranks."""

    order: torch.Tensor
    """`[P]` points grouped by simplex."""
    start: torch.Tensor
    """`[S]` start of each simplex's group in `order`."""
    size: torch.Tensor
    """`[S]` points of each simplex."""
    of_point: torch.Tensor
    """`[P]` simplex of each point."""


class _Vertices(NamedTuple):
    """The occupied lattice points (unique corner keys), in key order."""

    keys: torch.Tensor
    """`[M]` sorted key of each vertex."""
    corner_order: torch.Tensor
    """`[S * (d + 1)]` corners (simplex-major) grouped by vertex."""
    first: torch.Tensor
    """`[S * (d + 1)]` bool: True where a vertex's group in `corner_order` begins."""
    of_point: torch.Tensor
    """`[P, d + 1]` vertex of each point's simplex corners."""


class _SplatEntries(NamedTuple):
    """The (point, corner) entries grouped by vertex, as `F.embedding_bag` reads them."""

    point: torch.Tensor
    """`[P * (d + 1)]` point of each entry."""
    bary: torch.Tensor
    """`[P * (d + 1)]` barycentric weight of each entry."""
    offsets: torch.Tensor
    """`[M]` start of each vertex's group of entries."""


def _corner0_and_ranks(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner 0 `[d + 1, P]` of each `elevated` `[d + 1, P]` point's simplex, int64 ranks of the offsets."""
    n1 = elevated.shape[0]
    dims = n1 - 1
    points = elevated.shape[1]

    # The closest remainder-0 lattice point (ties round down, as pydensecrf).
    scaled = elevated * (1.0 / n1)
    down, up = scaled.floor() * n1, scaled.ceil() * n1
    rem0 = torch.where(up - elevated < elevated - down, up, down)

    # Rank of each coordinate's offset (0 = largest; ties: the lower index ranks first), then the
    # points off the plane sum = 0 are brought back.
    offset = elevated - rem0
    rank = torch.zeros(n1, points, dtype=torch.int16, device=elevated.device)
    for i in range(dims):
        for j in range(i + 1, n1):
            smaller = offset[i] < offset[j]
            rank[i] += smaller
            rank[j] += ~smaller
    rank += torch.round(rem0.sum(dim=0) * (1.0 / n1)).to(torch.int16)
    wrap = (rank < 0).to(torch.int16) - (rank > dims).to(torch.int16)  # +1: rank += d + 1, -1: rank -= d + 1
    rank += n1 * wrap
    rem0 += n1 * wrap
    return rem0, rank.long()


def _barycentric_weights(elevated: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """`[P, d + 1]` barycentric weights of the corners of each point's simplex (all `[d + 1, P]` inputs)."""
    n1 = elevated.shape[0]
    dims = n1 - 1
    # With y_r the offset of rank r, corner k weighs y_(d-k) - y_(d-k+1), corner 0 y_d + 1 - y_0.
    by_rank = torch.empty_like(elevated).scatter_(0, rank, (elevated - rem0) * (1.0 / n1)).flip(0)
    bary = by_rank - by_rank.roll(1, dims=0)
    bary[0] = by_rank[0] + (1.0 - by_rank[dims])
    return bary.T.contiguous()


def _enclosing_simplices(points: torch.Tensor) -> _EnclosingSimplices:
    """The lattice simplex enclosing each of `points` `[P, d]`: corner 0, ranks and barycentric weights."""
    elevated = _elevate(points)  # [d + 1, P]
    rem0, rank = _corner0_and_ranks(elevated)
    return _EnclosingSimplices(rem0, rank, _barycentric_weights(elevated, rem0, rank))


def _lattice_keys(rem0: torch.Tensor, batch: int) -> _LatticeKeys:
    """Keys of the corners 0 `rem0` `[d + 1, P]` of `batch` images of P / batch points each.

    The margins are wide enough that the blur's neighbour keys stay inside the image's own block of keys.
    """
    n1, points = rem0.shape
    dims, device = n1 - 1, rem0.device
    rem0_int = rem0[:dims].long()  # [d, P]
    low = rem0_int.amin(dim=1) - 2 * n1
    sizes = (rem0_int.amax(dim=1) - low + 2 * n1 + 1).tolist()
    block = math.prod(sizes)
    if block * batch >= 2**62:
        raise ValueError(
            "The CRF lattice is too fine for the image: lower the image size or raise the kernel stds "
            f"(lattice extent {sizes} for {batch} image(s) does not fit int64 keys)."
        )
    strides = [math.prod(sizes[i + 1 :]) for i in range(dims)] + [0]  # the last coordinate is implicit
    stride = torch.tensor(strides, device=device)
    corner0 = ((rem0_int - low[:, None]) * stride[:dims, None]).sum(dim=0)  # [P]
    if batch > 1:
        corner0 += torch.arange(batch, device=device).repeat_interleave(points // batch) * block
    return _LatticeKeys(corner0, strides, block * batch)


def _simplices(keys: _LatticeKeys, rank: torch.Tensor) -> _Simplices:
    """The occupied simplices, from the points' corner-0 keys `keys.corner0` and ranks `rank` `[d + 1, P]`."""
    n1, points = rank.shape
    dims = n1 - 1
    code = (rank[:dims] * (n1 ** torch.arange(dims, device=rank.device))[:, None]).sum(dim=0)  # [P]
    order = _sort_by([keys.corner0, code], [keys.num_keys, n1**dims])
    first = _group_starts([keys.corner0.index_select(0, order), code.index_select(0, order)])
    start = first.nonzero().squeeze(1)  # [S]
    size = torch.diff(start, append=start.new_tensor([points]))
    of_point = torch.empty_like(order).scatter_(0, order, first.cumsum(dim=0) - 1)
    return _Simplices(order, start, size, of_point)


def _corner_keys(keys: _LatticeKeys, rank: torch.Tensor, simplices: _Simplices) -> torch.Tensor:
    """`[S * (d + 1)]` keys of the corners of every simplex (simplex-major); `rank` `[d + 1, P]` per point.

    Corner r of a simplex: rem0 + r - (d + 1) [rank > d - r], i.e. corner 0 plus r along every coordinate
    and -(d + 1) along those of rank > d - r.
    """
    n1, device = rank.shape[0], rank.device
    dims = n1 - 1
    stride = torch.tensor(keys.strides, device=device)
    leader = simplices.order.index_select(0, simplices.start)  # [S] one point of each simplex
    num_simplices = leader.numel()
    stride_of_rank = torch.zeros(n1, num_simplices, dtype=torch.long, device=device)
    stride_of_rank.scatter_(0, rank.index_select(1, leader), stride[:, None].expand(n1, num_simplices))
    dropped = torch.cat(
        [stride_of_rank.new_zeros(1, num_simplices), stride_of_rank.flip(0).cumsum(dim=0)[:dims]]
    )
    corner = torch.arange(n1, device=device)[:, None]
    return (keys.corner0.index_select(0, leader) + corner * sum(keys.strides) - n1 * dropped).T.reshape(-1)


def _vertices(corner_keys: torch.Tensor, simplices: _Simplices) -> _Vertices:
    """Unique keys among `corner_keys` `[S * (d + 1)]` of `simplices`; the vertex of each point's corners."""
    corner_order = corner_keys.sort(stable=True).indices  # corners grouped by vertex
    sorted_keys = corner_keys.index_select(0, corner_order)
    first = _group_starts([sorted_keys])
    keys = sorted_keys[first]  # [M]
    corner_vertex = torch.empty_like(corner_order).scatter_(0, corner_order, first.cumsum(dim=0) - 1)
    of_point = corner_vertex.view(simplices.start.numel(), -1).index_select(
        0, simplices.of_point
    )  # [P, d + 1]
    return _Vertices(keys, corner_order, first, of_point)


def _splat_entries(simplices: _Simplices, vertices: _Vertices, bary: torch.Tensor) -> _SplatEntries:
    """The (point, corner) entries grouped by vertex, for the points' barycentric weights `bary` `[P, d + 1]`.

    Each corner, in vertex order, is expanded to the points of its simplex.
    """
    points, n1 = bary.shape
    corner_simplex, corner_index = vertices.corner_order // n1, vertices.corner_order % n1
    entries = simplices.size.index_select(0, corner_simplex)  # points per corner
    entry_start = entries.cumsum(dim=0) - entries
    total = points * n1
    first_point = simplices.start.index_select(0, corner_simplex)  # of the corner's simplex, in `order`
    position = _expand_runs(first_point - entry_start - 1, entry_start, total)
    position += torch.arange(1, total + 1, device=bary.device)  # index into `order`
    entry_point = simplices.order.index_select(0, position)
    del position  # [P * (d + 1)] int64 each, as are the two below: the peak of the lattice's memory
    bary_index = _expand_runs(corner_index, entry_start, total).add_(entry_point * n1)
    return _SplatEntries(
        point=entry_point,
        bary=bary.view(-1).index_select(0, bary_index),
        offsets=entry_start[vertices.first],
    )


def _blur_neighbours(
    vertex_keys: torch.Tensor, strides: list[int], dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per lattice direction, `[M, 3]` neighbours (below, self, above) of `vertex_keys` `[M]` and weights.

    An unoccupied neighbour is the vertex itself with weight 0; the others weigh (1/2, 1, 1/2).
    """
    n1, num_vertices, device = len(strides), vertex_keys.numel(), vertex_keys.device
    # Direction j: the neighbour above has every coordinate +1 and coordinate j - d, the one below the
    # opposite. Only those above are searched; "w is above v" is "v is below w".
    steps = torch.tensor([sum(strides) - n1 * strides[j] for j in range(n1)], device=device)
    above_keys = vertex_keys + steps[:, None]  # [d + 1, M]
    above = torch.searchsorted(vertex_keys, above_keys.view(-1)).clamp_(max=num_vertices - 1).view(n1, -1)
    found = vertex_keys.index_select(0, above.view(-1)).view(n1, -1) == above_keys  # [d + 1, M]
    self_index = torch.arange(num_vertices, device=device).expand(n1, num_vertices)
    below = torch.cat([self_index, self_index[:, :1]], dim=1)  # a last column for the unfound
    below.scatter_(1, torch.where(found, above, num_vertices), self_index)
    below = below[:, :num_vertices]
    above = torch.where(found, above, self_index)
    index_dtype = torch.int32 if num_vertices < 2**31 else torch.long  # what F.embedding_bag reads
    blur_index = torch.stack(
        [below.to(index_dtype), self_index.to(index_dtype), above.to(index_dtype)], dim=-1
    )  # [d + 1, M, 3]
    blur_weight = torch.ones(n1, num_vertices, 3, dtype=dtype, device=device)
    blur_weight[..., 0], blur_weight[..., 2] = 0.5 * (below != self_index), 0.5 * found
    return list(blur_index.unbind(0)), list(blur_weight.unbind(0))


def build_lattice(features: torch.Tensor) -> Lattice:
    """Permutohedral lattice of `features` `[B, N, d]` (already divided by their std); images stay apart."""
    batch, num_points, dims = features.shape
    enclosing = _enclosing_simplices(features.reshape(batch * num_points, dims))
    keys = _lattice_keys(enclosing.rem0, batch)
    simplices = _simplices(keys, enclosing.rank)
    vertices = _vertices(_corner_keys(keys, enclosing.rank, simplices), simplices)
    bary = enclosing.bary
    del enclosing  # its corners and ranks ([d + 1, P] float and int64) are not needed for the splat
    splat = _splat_entries(simplices, vertices, bary)
    del simplices
    blur_index, blur_weight = _blur_neighbours(vertices.keys, keys.strides, features.dtype)
    return Lattice(
        num_vertices=vertices.keys.numel(),
        vertex=vertices.of_point,
        bary=bary,
        splat_point=splat.point,
        splat_bary=splat.bary,
        splat_offsets=splat.offsets,
        blur_index=blur_index,
        blur_weight=blur_weight,
    )


def blur(
    values: torch.Tensor, blur_index: list[torch.Tensor], blur_weight: list[torch.Tensor]
) -> torch.Tensor:
    """Blurs vertex values `[M, C]` along every lattice direction in turn."""
    for index, weight in zip(blur_index, blur_weight):
        values = F.embedding_bag(index, values, mode="sum", per_sample_weights=weight)
    return values
