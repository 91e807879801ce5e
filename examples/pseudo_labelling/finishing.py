"""The end of a run of examples/generate_pseudo_labels.py (main process): each split's metadata.jsonl from the
records, the report that scores the pseudo masks, the dataset saved or pushed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pseudo_labelling.output_folder import REPORT
from weclip_hf.batch_jobs import (
    OUTPUTS,
    STATE_DIR,
    mark_finished,
    read_record,
    remove_file,
    remove_temporary_files,
    save_json,
    write_atomic,
)
from weclip_hf.metrics import nan_to_none, per_class_iou, scores_from_confusion

# the keys of an example's record (in .state/) that metadata.jsonl leaves out
STATE_KEYS = ("confusion", "input", OUTPUTS)


def finish_split(out: Path, split: str, id2label: dict) -> list[dict]:
    """metadata.jsonl of a split from the records of every process and run, the image-level labels by class name
    (``id2label``: the masks' ids, which the names tell a second stage in another class order, whose labels would
    then disagree with the masks, from one in this order); files of examples without a record (an interrupted
    run's) removed. Returns the records."""
    records = [read_record(p) for p in sorted((out / STATE_DIR / split).glob("*.json"))]
    kept = {r[k] for r in records for k in ("file_name", "mask_file_name")}
    for path in [*(out / split).glob("images/*"), *(out / split).glob("masks/*")]:
        if path.relative_to(out / split).as_posix() not in kept:
            remove_file(path, out)
    rows = [
        {
            **{k: v for k, v in r.items() if k not in STATE_KEYS},
            "image_labels": [id2label[i] for i in r["image_labels"]],
        }
        for r in records
    ]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    write_atomic(out / split / "metadata.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    return records


def pseudo_label_scores(records: list[dict], id2label: dict) -> dict:
    """Per mode: mIoU and per-class IoU of the pseudo masks over the images with a mask."""
    num_labels = len(id2label)
    report = {}
    for mode in ("cam", "rfm"):
        entries = [
            e for r in records if r["confusion"] and mode in r["confusion"] for e in r["confusion"][mode]
        ]
        if not entries:
            continue
        cm = np.zeros((num_labels, num_labels), dtype=np.int64)
        index = np.asarray(entries, dtype=np.int64).reshape(-1, 3)
        np.add.at(cm, (index[:, 0], index[:, 1]), index[:, 2])
        scores = scores_from_confusion(cm)
        report[mode] = {
            "mean_iou": nan_to_none(scores["mean_iou"]),
            "per_class_iou": per_class_iou(scores["per_category_iou"], id2label),
        }
    return report


def percent(value: float | None) -> str:
    """An IoU as a percentage ("-" for None: no pixel of the class)."""
    return "-" if value is None else f"{100 * value:.1f}"


def finish(args, out: Path, splits: dict, id2label: dict) -> dict:
    """metadata.jsonl of each split, pseudo_label_report.json, --save_to_disk / --push_to_hub."""
    report = {
        "mode": args.mode,
        "model": args.model or args.clip_model_name_or_path or "default CLIP",
        "splits": {},
    }
    for split, (_, _, unreadable, is_pseudo) in splits.items():
        records = finish_split(out, split, id2label)
        report["splits"][split] = {
            "num_images": len(records),
            "skipped_unreadable": list(unreadable.values()),
        }
        scores = pseudo_label_scores(records, id2label) if is_pseudo else {}
        if scores:  # the split has masks
            report["scores"] = scores
    remove_temporary_files([out])
    save_json(report, out / REPORT)
    mark_finished(out)
    for mode, scores in report.get("scores", {}).items():
        ious = ", ".join(f"{name} {percent(v)}" for name, v in scores["per_class_iou"].items())
        print(f"{mode.upper()} pseudo masks: mIoU {percent(scores['mean_iou'])} ({ious})")
    if args.save_to_disk or args.push_to_hub:
        import datasets

        dataset = datasets.load_dataset("imagefolder", data_dir=str(out))
        if args.save_to_disk:
            dataset.save_to_disk(args.save_to_disk)
        if args.push_to_hub:
            dataset.push_to_hub(
                args.hub_dataset_id or out.resolve().name, token=args.hub_token
            )  # made at the start
    return report
