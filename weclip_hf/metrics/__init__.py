"""Segmentation metrics: device-side mean IoU and an offline `evaluate` module with the Hub interface."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from .functional import MeanIoU, confusion_matrix, nan_to_none, per_class_iou, scores_from_confusion

__all__ = [
    "MEAN_IOU_MODULE_PATH",
    "MeanIoU",
    "confusion_matrix",
    "load_mean_iou_metric",
    "nan_to_none",
    "per_class_iou",
    "scores_from_confusion",
]

MEAN_IOU_MODULE_PATH = str(files(__name__) / "weclip_mean_iou")
"""Folder of the bundled `evaluate` mean IoU module (pass it to `evaluate.load`)."""


def load_mean_iou_metric(**kwargs: Any) -> Any:
    """Loads the bundled mean IoU module with `evaluate.load` (works offline); kwargs go to `evaluate.load`."""
    import evaluate

    return evaluate.load(MEAN_IOU_MODULE_PATH, **kwargs)
