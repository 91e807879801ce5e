"""The outputs of an example of examples/generate_pseudo_labels.py: its image (copied), its mask, its record
(written last, the mark that it is done; with the confusion of its pseudo masks where the input has a mask) and its
overlay (also the overlay alone, of a done example whose overlay a later run asks for).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pseudo_labelling.model import pseudo_masks
from pseudo_labelling.output_folder import example_name, overlay_path, record_path
from weclip_hf.batch_jobs import (
    OUTPUTS,
    copy_file,
    read_record,
    save_bytes,
    save_image,
    save_json,
    save_overlay,
    wants_overlay,
)
from weclip_hf.metrics import confusion_matrix
from weclip_hf.visualization import label_map_image, overlay_figure, present_class_cams

# the formats whose bytes are copied as they are (others are re-encoded as PNG)
COPIED_FORMATS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "GIF": ".gif",
}


def save_stored_image(stored: dict, rgb: np.ndarray, path_without_suffix: Path) -> Path:
    """Copy a stored image (``{"bytes", "path"}``) in its own format; other formats are saved as PNG of ``rgb``."""
    if stored.get("bytes") is not None:
        image_format = Image.open(io.BytesIO(stored["bytes"])).format
        if image_format in COPIED_FORMATS:
            return save_bytes(stored["bytes"], path_without_suffix.with_suffix(COPIED_FORMATS[image_format]))
    elif stored.get("path") and Path(stored["path"]).suffix.lower() in COPIED_FORMATS.values():
        return copy_file(stored["path"], path_without_suffix.with_suffix(Path(stored["path"]).suffix.lower()))
    return save_image(Image.fromarray(rgb), path_without_suffix.with_suffix(".png"))


def sparse_confusion(pred: torch.Tensor, mask: np.ndarray, num_labels: int, ignore_index: int) -> list:
    """The non-zero entries ``[reference, prediction, count]`` of the confusion matrix of one image."""
    cm = confusion_matrix(pred.cpu(), mask.astype(np.int64), num_labels, ignore_index=ignore_index)
    nonzero = cm.nonzero()
    return torch.cat([nonzero, cm[nonzero[:, 0], nonzero[:, 1]][:, None]], dim=1).tolist()


def write_example(
    out: Path,
    split: str,
    item: dict,
    mask,
    name: str,
    confusion: dict | None,
    num_labels: int,
    overlay: Path | None = None,
) -> None:
    """The image, the mask (`label_map_image`: 16-bit for more than 256 labels, ``num_labels``) and, last, the
    record (the mark that the example is done), which lists the files written for it (``overlay`` too, written
    before)."""
    folder = out / split
    image_path = save_stored_image(item["stored"], item["rgb"], folder / "images" / name)
    mask_path = save_image(label_map_image(mask, num_labels), folder / "masks" / f"{name}.png")
    record = {
        "file_name": image_path.relative_to(folder).as_posix(),
        "mask_file_name": mask_path.relative_to(folder).as_posix(),
        "image_labels": list(item["image_labels"]),
        "source": str(item["record"]["source"]),
    }
    outputs = [p.relative_to(out).as_posix() for p in (image_path, mask_path, overlay) if p is not None]
    save_json(
        {**record, "input": item["record"]["input"], "confusion": confusion, OUTPUTS: outputs},
        record_path(out, split, name),
    )


def write_pseudo_masks(model, group: list[dict], args, out: Path, split: str, overlay_only: set[int]) -> None:
    """Pseudo masks of same-size images; where masks exist, their confusion with CAM (and RFM) masks. The rows in
    ``overlay_only`` (positions: done, their overlay missing) get their overlay only, of the mask written
    (`add_overlay`)."""
    cfg = model.config
    masks, cams = pseudo_masks(model, group, args.mode, args.max_size)
    scored = {args.mode: masks}
    if args.mode == "rfm" and any(item["mask"] is not None for item in group):
        scored["cam"] = pseudo_masks(model, group, "cam", args.max_size)[0]
    for k, item in enumerate(group):
        name = example_name(item["row"])
        if item["position"] in overlay_only:
            add_overlay(out, split, item, cams[k], cfg, args.mode)
            continue
        confusion = None
        if item["mask"] is not None:
            confusion = {
                mode: sparse_confusion(pred[k], item["mask"], cfg.num_labels, cfg.semantic_loss_ignore_index)
                for mode, pred in scored.items()
            }
        overlay = None
        if wants_overlay(item["row"], args.num_overlays):
            overlay = save_overlay(
                example_overlay(item, masks[k], cams[k], cfg, args.mode), overlay_path(out, name)
            )
        write_example(out, split, item, masks[k], name, confusion, cfg.num_labels, overlay)


def example_overlay(item: dict, mask, cams: torch.Tensor, cfg, mode: str) -> Image.Image:
    """The overlay figure of an example: the image, its pseudo ``mask`` (and ground truth), the CAMs [C, h, w] of
    its classes."""
    panels = {f"{mode.upper()} pseudo mask": mask}
    if item["mask"] is not None:
        panels["ground truth"] = item["mask"]
    return overlay_figure(
        item["rgb"],
        panels,
        cfg.id2label,
        present_class_cams(cams, item["class_labels"], cfg.id2label),
        ignore_index=cfg.semantic_loss_ignore_index,
    )


def add_overlay(out: Path, split: str, item: dict, cams: torch.Tensor, cfg, mode: str) -> None:
    """The overlay of a done example (asked for by a later run), of the mask written: its record lists it first."""
    name = example_name(item["row"])
    record = read_record(record_path(out, split, name))
    outputs = [f"{split}/{record[key]}" for key in ("file_name", "mask_file_name")]
    save_json({**record, OUTPUTS: [*outputs, f"overlays/{name}.png"]}, record_path(out, split, name))
    with Image.open(out / split / record["mask_file_name"]) as image:
        mask = np.asarray(image)
    save_overlay(example_overlay(item, mask, cams, cfg, mode), overlay_path(out, name))
