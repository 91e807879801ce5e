"""Offline, Hub-compatible mean IoU metric for `evaluate.load("<path to this folder>")`.

Same inputs, keyword arguments and results as the Hub `mean_iou` metric, except a ``label_map`` whose pairs
chain or swap (``{1: 2, 2: 3}``, ``{1: 2, 2: 1}``): here every pair is looked up on the original labels, the Hub
metric remaps one pair after the other in place. `evaluate` imports this file on
its own, so it uses only numpy, datasets and evaluate (one import per line, no package imports); the
device-side equivalent for training loops is `weclip_hf.metrics.functional`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Mean Intersection-over-Union of semantic segmentation maps. Areas are summed over the whole dataset
before dividing (mmseg / PASCAL VOC protocol); a class absent from both predictions and references has
IoU NaN and is excluded from the means.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of 2-D integer arrays or tensors): predicted label maps, one per image.
    references (`list` of 2-D integer arrays or tensors): reference label maps with the same shapes.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value whose pixels are dropped (255 for PASCAL VOC).
    nan_to_num (`float`, *optional*): replaces NaN in the results, after the means are taken.
    label_map (`dict`, *optional*): old -> new reference labels, looked up on the original labels.
    reduce_labels (`bool`, defaults to `False`): map reference 0 to 255 and subtract 1 from the others.
Returns:
    `mean_iou`, `mean_accuracy`, `overall_accuracy` (float) and `per_category_iou`,
    `per_category_accuracy` (`np.ndarray` of shape `(num_labels,)`).
Example:
    >>> metric = evaluate.load("path/to/weclip_mean_iou")
    >>> metric.compute(predictions=[pred], references=[ref], num_labels=21, ignore_index=255)
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
author = {{MMSegmentation Contributors}},
license = {Apache-2.0},
title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
url = {https://github.com/open-mmlab/mmsegmentation},
year = {2020}
}
"""


def _histogram(values, num_labels):
    """Counts of each label in `[0, num_labels)`; other values are dropped (like the Hub's histogram)."""
    values = values[(values >= 0) & (values < num_labels)]
    return np.bincount(values, minlength=num_labels)


def _label_map(x, name):
    """One map as int64 labels; a float map must hold whole numbers (the Hub metric compares float values exactly,
    so truncating 0.9 to class 0 would score it differently)."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and not np.array_equal(x, np.round(x)):
        raise ValueError(f"{name} must hold integer labels, got a {x.dtype} map with fractional values.")
    return x.astype(np.int64)


def _areas(pred, ref, num_labels, ignore_index, label_map, reduce_labels):
    """Intersection, prediction and reference areas `[3, num_labels]` of one image."""
    pred = _label_map(pred, "a prediction")
    original = _label_map(ref, "a reference")
    if pred.shape != original.shape:
        raise ValueError(
            f"a prediction of shape {pred.shape} was paired with a reference of shape {original.shape}."
        )
    pred, original = pred.reshape(-1), original.reshape(-1)
    ref = original.copy()
    for old_id, new_id in (label_map or {}).items():
        ref[original == old_id] = new_id
    if reduce_labels:
        ref = np.where(ref == 0, 255, ref) - 1
        ref = np.where(ref == 254, 255, ref)
    keep = ref != ignore_index
    pred, ref = pred[keep], ref[keep]
    return np.stack(
        [_histogram(pred[pred == ref], num_labels), _histogram(pred, num_labels), _histogram(ref, num_labels)]
    )


def _scores(intersection, area_pred, area_label, nan_to_num):
    """The Hub `mean_iou` results from dataset-level areas."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / (area_pred + area_label - intersection)
        accuracy = intersection / area_label
        overall = intersection.sum() / area_label.sum()
    results = {
        "mean_iou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.any(~np.isnan(accuracy)) else float("nan"),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
        results = {key: value if key.startswith("per_") else float(value) for key, value in results.items()}
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WeCLIPMeanIoU(evaluate.Metric):
    """Mean IoU with the Hub `mean_iou` interface, usable without network access."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Image features (as the Hub metric): each 2-D map is stored once, faster than nested lists.
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels,
        ignore_index,
        nan_to_num=None,
        label_map=None,
        reduce_labels=False,
    ):
        areas = np.zeros((3, num_labels), dtype=np.float64)
        for pred, ref in zip(predictions, references, strict=True):
            areas += _areas(pred, ref, num_labels, ignore_index, label_map, reduce_labels)
        return _scores(areas[0], areas[1], areas[2], nan_to_num)
