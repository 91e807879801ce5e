"""The run's report: the label maps read back, class_fractions.json, and the exit status it gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segmenting.output_layout import REPORT
from weclip_hf.batch_jobs import read_skipped, remove_temporary_files, save_json
from weclip_hf.visualization import fractions_from_counts
from weclip_hf.wording import counted


def read_label_map(path: Path) -> torch.Tensor:
    """A label map written by this script: the ids [H, W] (int64) of its palette indices or 16-bit values."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image).astype(np.int64))


def write_report(
    out: Path, names: list[str], label_path: dict, id2label, model_name: str, num_processes: int
) -> dict:
    """class_fractions.json: per image and over all images, the fraction of pixels of each class; the skipped
    inputs (of the run's ``num_processes`` processes' lists)."""
    per_image, totals = {}, np.zeros(max(256, len(id2label)), dtype=np.int64)  # ids 0..C
    for name in names:
        if label_path[name].exists():
            labels = np.asarray(Image.open(label_path[name]))  # palette indices, or 16-bit ids: 0..C
            counts = np.bincount(labels.ravel(), minlength=len(totals))  # a pass, not np.unique's sort
            per_image[name] = fractions_from_counts(counts, id2label)
            totals += counts
    report = {
        "model": model_name,
        "num_images": len(per_image),
        "classes": fractions_from_counts(totals, id2label) if per_image else {},
        "images": per_image,
        # an earlier run's inputs that are not this run's are not reported
        "skipped": read_skipped(
            out, num_processes, lambda name: name not in label_path or label_path[name].exists()
        ),
    }
    remove_temporary_files([out])
    save_json(report, out / REPORT)
    print(
        f"{counted(report['num_images'], 'label map')} in {out / 'labels'}; skipped inputs: "
        f"{len(report['skipped'])}"
    )
    return report


def exit_status(report: dict | None) -> int:
    """1 when inputs were given but none could be segmented (every one skipped), else 0 (other processes: 0)."""
    return 1 if report is not None and report["num_images"] == 0 and report["skipped"] else 0
