"""Mean IoU from a confusion matrix, computed on the device of the inputs.

The semantics follow the Hugging Face Hub ``mean_iou`` metric (mmseg style, dataset-level IoU):
``label_map`` and ``reduce_labels`` act on the references only, pixels whose reference equals
``ignore_index`` are dropped, and areas are summed over the whole dataset before dividing. A class that is
absent from both predictions and references has IoU ``NaN`` and is left out of the means.

One difference, by design: a pixel is counted only when *both* its reference and its prediction lie in
``[0, num_labels)``. The Hub metric histograms the two maps separately, so a valid reference paired with an
out-of-range prediction (e.g. 255) still counts there as a miss of the reference class. The results are
identical whenever predictions come from an argmax and references are in range or ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["MeanIoU", "confusion_matrix", "scores_from_confusion"]

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
    ignore_index: int = 255,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> torch.Tensor:
    """Counts (reference, prediction) label pairs.

    Args:
        pred: predicted label map(s), `[B, H, W]` or `[H, W]`, tensor or array of integers.
        ref: reference label map(s) of the same shape.
        num_labels: number of classes.
        ignore_index: reference value whose pixels are dropped (after `label_map` / `reduce_labels`).
        label_map: old -> new reference labels; all lookups use the original labels.
        reduce_labels: map reference 0 to 255 and subtract 1 from the others (ADE20k style).

    Returns:
        `LongTensor[num_labels, num_labels]` on the device of `pred`; rows are references, columns
        predictions. Pairs with a value outside `[0, num_labels)` are not counted.
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"`num_labels` must be a positive int, got {num_labels!r}.")
    pred_shape, ref_shape = tuple(np.shape(pred)), tuple(np.shape(ref))
    if pred_shape != ref_shape:
        raise ValueError(
            f"`pred` and `ref` must have the same shape, got pred {pred_shape} and ref {ref_shape}."
        )
    pred_t = _as_long_tensor(pred, "pred")
    ref_t = _map_references(_as_long_tensor(ref, "ref", pred_t.device), label_map, reduce_labels)
    pred_t, ref_t = pred_t.reshape(-1), ref_t.reshape(-1)
    valid = (
        (ref_t != ignore_index) & (ref_t >= 0) & (ref_t < num_labels) & (pred_t >= 0) & (pred_t < num_labels)
    )
    pair_index = ref_t[valid] * num_labels + pred_t[valid]
    counts = torch.bincount(pair_index, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def scores_from_confusion(cm: ArrayLike, nan_to_num: float | None = None) -> dict[str, Any]:
    """Scores of the Hub `mean_iou` metric from a confusion matrix.

    Args:
        cm: `[num_labels, num_labels]` counts, rows = references, columns = predictions.
        nan_to_num: if given, replaces NaN in the results (applied after the means, as the Hub does, so
            it changes the per-category arrays but not the means of a non-empty evaluation).

    Returns:
        `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`,
        `per_category_accuracy` (`np.ndarray[num_labels]` of float64).
    """
    cm_np = cm.detach().cpu().double().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm, np.float64)
    if cm_np.ndim != 2 or cm_np.shape[0] != cm_np.shape[1]:
        raise ValueError(f"`cm` must be a square [num_labels, num_labels] matrix, got shape {cm_np.shape}.")
    intersection = np.diag(cm_np)
    area_label = cm_np.sum(axis=1)
    area_union = area_label + cm_np.sum(axis=0) - intersection
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


def _replace_nan(value: float | np.ndarray, fill: float) -> float | np.ndarray:
    """`np.nan_to_num` that keeps Python floats as floats."""
    replaced = np.nan_to_num(value, nan=fill)
    return replaced if isinstance(value, np.ndarray) else float(replaced)


class MeanIoU:
    """Accumulates a confusion matrix over batches and computes the Hub `mean_iou` scores.

    `confusion` (`LongTensor[num_labels, num_labels]`) lives on the device of the last `update` and can be
    reduced across processes before `compute`, e.g.
    `metric.confusion = accelerator.reduce(metric.confusion, "sum")`.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"`num_labels` must be a positive int, got {num_labels!r}.")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.reduce_labels = reduce_labels
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.long, device=device)

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        """Adds label maps `pred`, `ref` (`[B, H, W]` or `[H, W]`) to the confusion matrix."""
        cm = confusion_matrix(
            pred, ref, self.num_labels, self.ignore_index, self.label_map, self.reduce_labels
        )
        self.confusion = self.confusion.to(cm.device) + cm

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """Scores of everything seen since the last `reset` (see `scores_from_confusion`)."""
        return scores_from_confusion(self.confusion, nan_to_num)

    def reset(self) -> None:
        """Zeroes the confusion matrix in place."""
        self.confusion.zero_()
