"""Mean IoU from a confusion matrix, computed on the device of the inputs.

The semantics follow the Hugging Face Hub ``mean_iou`` metric (mmseg style, dataset-level IoU):
``label_map`` and ``reduce_labels`` act on the references only (``label_map`` looked up on the original
labels, so ``{1: 2, 2: 1}`` swaps two classes; the Hub metric remaps one pair after the other in place, which
differs for chained or swapped pairs), pixels whose reference equals
``ignore_index`` are dropped, and areas are summed over the whole dataset before dividing. A class that is
absent from both predictions and references has IoU ``NaN`` and is left out of the means.

Labels outside ``[0, num_labels)``: the Hub metric histograms the two maps separately, so a reference
in range paired with an out-of-range prediction (e.g. 255) still counts as a miss of the reference class,
and a prediction in range paired with an out-of-range reference that is not ``ignore_index`` (e.g. the
255 borders of VOC evaluated with ``ignore_index=0``) still enlarges that class's union. `MeanIoU` does
the same: its confusion matrix has one more row and column that collect those labels
(``confusion_matrix(..., out_of_range_bin=True)``). Plain ``confusion_matrix`` (the default, a
``[num_labels, num_labels]`` matrix) drops such pixels; it agrees with the Hub metric whenever
predictions come from an argmax and references are in range or ``ignore_index``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["MeanIoU", "confusion_matrix", "nan_to_none", "per_class_iou", "scores_from_confusion"]

ArrayLike = torch.Tensor | np.ndarray


def _as_long_tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """Converts a tensor, array or nested list to an int64 tensor (no copy when already int64)."""
    if isinstance(x, torch.Tensor):
        tensor = x
    else:
        array = np.asarray(x)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
            raise TypeError(f"`{name}` must hold integer labels, got dtype {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"`{name}` must hold integer labels, got dtype {tensor.dtype}.")
    return tensor.to(device=device if device is not None else tensor.device, dtype=torch.long)


def _check_num_labels(num_labels: Any) -> int:
    """``num_labels`` as an int: any integer (a numpy or 0-d torch one included, e.g. ``labels.max() + 1``) from 1."""
    if (
        isinstance(num_labels, torch.Tensor)
        and num_labels.numel() == 1
        and not num_labels.is_floating_point()
    ):
        num_labels = num_labels.item()
    if not isinstance(num_labels, numbers.Integral) or isinstance(num_labels, bool) or num_labels < 1:
        raise ValueError(f"`num_labels` must be a positive int, got {num_labels!r}.")
    return int(num_labels)


def _shape(x: Any, name: str) -> tuple[int, ...]:
    """The shape of a label map, or an error naming the accepted ones (maps of several sizes in one list)."""
    try:
        return tuple(np.shape(x))
    except ValueError as error:
        raise ValueError(
            f"`{name}` must be one label map [H, W] or maps of one size [B, H, W]; maps of several sizes go one "
            f"`update` (or `confusion_matrix` call) each ({error})."
        ) from None


def _map_references(
    ref: torch.Tensor, label_map: Mapping[int, int] | None, reduce_labels: bool
) -> torch.Tensor:
    """Applies ``label_map`` (looked up on the original labels) and then ``reduce_labels`` to references."""
    if label_map:
        mapped = ref.clone()
        for old_id, new_id in label_map.items():
            mapped[ref == old_id] = new_id
        ref = mapped
    if reduce_labels:
        ref = torch.where(ref == 0, 255, ref) - 1
        ref = torch.where(ref == 254, 255, ref)
    return ref


def confusion_matrix(
    pred: ArrayLike,
    ref: ArrayLike,
    num_labels: int,
    ignore_index: int | None = 255,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
    out_of_range_bin: bool = False,
) -> torch.Tensor:
    """Counts (reference, prediction) label pairs.

    Args:
        pred: predicted label map(s), `[B, H, W]` or `[H, W]`, tensor or array of integers.
        ref: reference label map(s) of the same shape.
        num_labels: number of classes.
        ignore_index: reference value whose pixels are dropped (after `label_map` / `reduce_labels`); None
            drops none.
        label_map: old -> new reference labels; all lookups use the original labels.
        reduce_labels: map reference 0 to 255 and subtract 1 from the others (ADE20k style).
        out_of_range_bin: count labels outside `[0, num_labels)` in an extra last row (references other
            than `ignore_index`) and column (predictions) instead of dropping their pixels, so that
            `scores_from_confusion(cm, out_of_range_bin=True)` gives the Hub metric's scores exactly.

    Returns:
        `LongTensor[num_labels, num_labels]` (`[num_labels + 1, num_labels + 1]` with `out_of_range_bin`)
        on the device of `pred`; rows are references, columns predictions. Without `out_of_range_bin`,
        pairs with a value outside `[0, num_labels)` are not counted.
    """
    num_labels = _check_num_labels(num_labels)
    pred_shape, ref_shape = _shape(pred, "pred"), _shape(ref, "ref")
    if pred_shape != ref_shape:
        raise ValueError(
            f"`pred` and `ref` must have the same shape, got pred {pred_shape} and ref {ref_shape}."
        )
    pred_t = _as_long_tensor(pred, "pred")
    ref_t = _map_references(_as_long_tensor(ref, "ref", pred_t.device), label_map, reduce_labels)
    pred_t, ref_t = pred_t.reshape(-1), ref_t.reshape(-1)
    keep = torch.ones_like(ref_t, dtype=torch.bool) if ignore_index is None else ref_t != ignore_index
    if out_of_range_bin:
        pred_t = torch.where((pred_t >= 0) & (pred_t < num_labels), pred_t, num_labels)[keep]
        ref_t = torch.where((ref_t >= 0) & (ref_t < num_labels), ref_t, num_labels)[keep]
        size = num_labels + 1
    else:
        keep &= (ref_t >= 0) & (ref_t < num_labels) & (pred_t >= 0) & (pred_t < num_labels)
        pred_t, ref_t, size = pred_t[keep], ref_t[keep], num_labels
    counts = torch.bincount(ref_t * size + pred_t, minlength=size * size)
    return counts.reshape(size, size)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def scores_from_confusion(
    cm: ArrayLike, nan_to_num: float | None = None, out_of_range_bin: bool = False
) -> dict[str, Any]:
    """Scores of the Hub `mean_iou` metric from a confusion matrix.

    Args:
        cm: `[num_labels, num_labels]` counts, rows = references, columns = predictions.
        nan_to_num: if given, replaces NaN in the results (applied after the means, as the Hub does, so
            it changes the per-category arrays but not the means of a non-empty evaluation).
        out_of_range_bin: `cm` is `[num_labels + 1, num_labels + 1]` from
            `confusion_matrix(..., out_of_range_bin=True)`; its last row and column count towards the
            classes' label and prediction areas (the Hub metric's areas), not as a class.

    Returns:
        `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`,
        `per_category_accuracy` (`np.ndarray[num_labels]` of float64).
    """
    cm_np = cm.detach().cpu().double().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm, np.float64)
    if cm_np.ndim != 2 or cm_np.shape[0] != cm_np.shape[1]:
        raise ValueError(f"`cm` must be a square [num_labels, num_labels] matrix, got shape {cm_np.shape}.")
    num_labels = cm_np.shape[0] - 1 if out_of_range_bin else cm_np.shape[0]
    if num_labels < 1:
        raise ValueError(f"`cm` with `out_of_range_bin=True` must be at least 2x2, got shape {cm_np.shape}.")
    intersection = np.diag(cm_np)[:num_labels]
    area_label = cm_np[:num_labels].sum(axis=1)
    area_union = area_label + cm_np[:, :num_labels].sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / area_union
        accuracy = intersection / area_label
        overall = intersection.sum() / area_label.sum()
    metrics: dict[str, Any] = {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        metrics = {key: _replace_nan(value, nan_to_num) for key, value in metrics.items()}
    return metrics


def nan_to_none(value: float) -> float | None:
    """A score as a JSON value: None for NaN (a class absent from predictions and references, or no pixel scored)."""
    return None if math.isnan(value) else float(value)


def per_class_iou(per_category_iou: ArrayLike, id2label: Mapping[int, str]) -> dict[str, float | None]:
    """Class name -> IoU of `scores_from_confusion`'s ``per_category_iou``, None where NaN, as the reports write it."""
    return {id2label[i]: nan_to_none(value) for i, value in enumerate(per_category_iou)}


def _replace_nan(value: float | np.ndarray, fill: float) -> float | np.ndarray:
    """`np.nan_to_num` that keeps Python floats as floats."""
    replaced = np.nan_to_num(value, nan=fill)
    return replaced if isinstance(value, np.ndarray) else float(replaced)


class MeanIoU:
    """Accumulates a confusion matrix over batches and computes the Hub `mean_iou` scores.

    Labels outside `[0, num_labels)` count as in the Hub metric (see the module docstring): `confusion`
    (`LongTensor[num_labels + 1, num_labels + 1]`, rows = references, columns = predictions, the last row and
    column for out-of-range labels) lives on the device of the last `update`. Across processes, either update
    with what `accelerator.gather_for_metrics((pred, ref))` returns (every process then holds every image once),
    or update each process with its own images and sum once before `compute`:
    ``metric.confusion = accelerator.reduce(metric.confusion, "sum")``. The sum counts each image once only when
    the processes' images do not overlap: a DataLoader passed through `accelerator.prepare` repeats images to
    fill the last batch of every process (use `gather_for_metrics` there), and summing again before a second
    `compute` counts everything again.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        num_labels = _check_num_labels(num_labels)
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.reduce_labels = reduce_labels
        self.confusion = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.long, device=device)

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        """Adds label maps `pred`, `ref` (`[B, H, W]` or `[H, W]`) to the confusion matrix."""
        cm = confusion_matrix(
            pred,
            ref,
            self.num_labels,
            self.ignore_index,
            self.label_map,
            self.reduce_labels,
            out_of_range_bin=True,
        )
        self.confusion = self.confusion.to(cm.device) + cm

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """Scores of everything seen since the last `reset` (see `scores_from_confusion`)."""
        return scores_from_confusion(self.confusion, nan_to_num, out_of_range_bin=True)

    def reset(self) -> None:
        """Zeroes the confusion matrix in place."""
        self.confusion.zero_()
