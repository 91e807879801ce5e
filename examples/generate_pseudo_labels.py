#!/usr/bin/env python
"""Pseudo masks from the frozen CLIP for a dataset with image-level labels, written as a dataset to train on.

    python examples/generate_pseudo_labels.py --output_dir outputs/toy-pseudo --validation_split validation
    python examples/generate_pseudo_labels.py --model outputs/weclip-toy --output_dir outputs/toy-pseudo-rfm
    accelerate launch examples/generate_pseudo_labels.py --preset voc --dataset_name jxie/pascal-voc-2012 \\
        --output_dir voc-pseudo                                    # the processes split the images
    python examples/train.py --preset toy --data_dir outputs/toy-pseudo --fully_supervised \\
        --output_dir outputs/toy-two-stage                         # stage two: train on the pseudo masks

The input is any dataset `examples/train.py` accepts (the toy world by default, a Hub dataset, an imagefolder or
a saved dataset; image-level labels as ids, multi-hot rows or class names, or taken from masks). The pseudo
masks come from the CAMs of the frozen CLIP: with --model (a trained WeCLIP folder) refined with its RFM, else
from a bare CLIP (--clip_model_name_or_path, through `WeCLIPForSemanticSegmentation.from_clip`; WeCLIP presets
only) without it. A trained WeCLIP+'s CAMs (--mode cam too) are weighted by its decoder's prediction (RFM+'s
re-weighting), so they are not the frozen CLIP's alone.

Output (--output_dir), an imagefolder that `datasets.load_dataset("imagefolder", data_dir=...)` and `train.py
--data_dir` read (each split's folder keeps its name, read back by `datasets`' rules: `check_split_names`):
``<split>/images/`` (the images, copied), ``<split>/masks/`` (palette PNGs whose values are the ids of
``config.id2label``), ``<split>/metadata.jsonl`` (``file_name``, ``mask_file_name``, ``image_labels`` by class
name, ``source``);
with --validation_split, that split copied with its ground-truth masks. Where the input has masks,
``pseudo_label_report.json`` scores the pseudo masks (per-class IoU; CAM, and with --model RFM). Optional:
``overlays/`` (--num_overlays; a re-run draws those that done rows lack), --save_to_disk, --push_to_hub. Re-running
the same command after an interruption continues where it stopped (every file is written atomically; an image is
done when its record in ``.state/`` exists and names the same input: the size and SHA-256 of the row's image and
mask bytes, and its image-level labels). Rows of another input under the same row numbers (another dataset, toy
seed or labels column) are refused, or with --overwrite_output_dir replaced; so are rows this run does not have (an
earlier run of more images, or a row whose image is unreadable now), or with it dropped, so that the dataset
written is this run's. Until a run is done, its folder is marked unfinished and holds no metadata.jsonl (nor
report), so that an interrupted run is not read as the earlier dataset with some of this run's masks; `train.py
--data_dir` refuses it. A re-run with other settings, or with another model saved at the same --model or
--clip_model_name_or_path folder (its weights and config.json are recorded by their SHA-256, its image processor by
its settings; a Hub id's of the revision it resolves to), is refused, or with --overwrite_output_dir starts over:
it removes the earlier run's dataset (the files of its split folders, its records and report, the overlays its
records list as written: other files of overlays/ stay). A run deletes the files of its split folders it has no
record of, so --output_dir must not be, hold or lie inside the input dataset (--data_dir, --dataset_path), a
non-empty folder this script did not write (no ``.state/``) is refused unless --overwrite_output_dir, and a link
among its outputs (split folders, ``.state/``, ``overlays/``, or inside them) always: it would write and delete
through it.

The device: accelerate's (each process's own GPU under `accelerate launch`, else a GPU where there is one), or
--device (cpu, cuda, cuda:N, mps; one that torch does not find here is refused before the model loads). Several
processes take every n-th image each (on CPUs: ``accelerate launch --multi_gpu --num_processes N
examples/generate_pseudo_labels.py --device cpu``, as ``accelerate launch --cpu`` starts one process).

Phases: arguments -> data -> model -> pseudo masks (each process its share) -> metadata, report (main process).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForSemanticSegmentation

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.batch_jobs import (
    OUTPUTS,
    SETTINGS,
    STATE_DIR,
    check_no_links,
    check_recorded_inputs,
    check_run_settings_or_start_over,
    content_fingerprint,
    copy_file,
    decoding_workers,
    folder_contents,
    group_by_size,
    image_processor_setting,
    is_whole_image,
    mark_finished,
    mark_unfinished,
    process_share,
    read_input_record,
    read_record,
    recorded_outputs,
    remove_file,
    remove_temporary_files,
    run_resumable,
    save_bytes,
    save_image,
    save_json,
    save_overlay,
    some_of,
    wants_overlay,
    write_atomic,
)
from weclip_hf.data.columns import resolve_columns
from weclip_hf.data.decoding import file_path, row_name
from weclip_hf.data.image_labels import add_image_labels
from weclip_hf.data.loading import (
    DATA_SOURCE_FLAGS,
    PSEUDO_LABEL_REPORT,
    DataSource,
    dataset_classes_note,
    imagefolder_split_name,
    load_dataset_splits,
    names_no_dataset,
    read_example,
)
from weclip_hf.data.toy import check_toy_classes, default_clip_model
from weclip_hf.data.transforms import multi_hot, normalize
from weclip_hf.evaluation import processor_input_size
from weclip_hf.hub import create_hub_repo
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.inference import image_pseudo_labels
from weclip_hf.metrics import confusion_matrix, nan_to_none, per_class_iou, scores_from_confusion
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import PRESETS, get_preset, preset_config_kwargs, with_class_names
from weclip_hf.script_arguments import (
    CLASS_NAMES_HELP,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    add_data_source_flags,
    add_process_device_flag,
    add_toy_size_flags,
    check_device_fits_launch,
    check_hub_token,
    check_model_argument,
    check_output_path,
    check_preset_fits_data,
    check_source_flags,
    first_paragraph,
    naming_the_model_flag,
    process_device,
    process_state,
)
from weclip_hf.visualization import label_map_image, overlay_figure, present_class_cams
from weclip_hf.wording import counted

REPORT = PSEUDO_LABEL_REPORT
# the writer recorded in the settings, which `check_finished` names to the readers of an unfinished folder
WRITER = "examples/generate_pseudo_labels.py"
# the keys of an example's record (in .state/) that metadata.jsonl leaves out
STATE_KEYS = ("confusion", "input", OUTPUTS)
# the formats whose bytes are copied as they are (others are re-encoded as PNG)
COPIED_FORMATS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "GIF": ".gif",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument(
        "--output_dir",
        required=True,
        help="the imagefolder written: <split>/images, masks, metadata.jsonl (a re-run continues there)",
    )
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace the outputs of rows whose input changed, drop those of other rows; start over where the "
        "folder holds a run with other settings (all refused without it); write into a non-empty folder this "
        "script did not write, deleting the files of its split folders",
    )
    data = p.add_argument_group("data (default: the offline toy world)")
    add_data_source_flags(data)
    data.add_argument("--dataset_config_name", help=DATASET_CONFIG_HELP)
    data.add_argument("--split", default="train", help="the split to pseudo-label (default: train)")
    data.add_argument("--validation_split", help="also copy this split, with its ground-truth masks")
    data.add_argument("--image_column", help=IMAGE_COLUMN_HELP)
    data.add_argument("--mask_column", help=MASK_COLUMN_HELP)
    data.add_argument("--labels_column", help=LABELS_COLUMN_HELP)
    data.add_argument("--labels_zero_based", action="store_true", help="image-level ids are 0..C-1")
    data.add_argument("--max_samples", type=int, help="the first N images of --split")
    add_toy_size_flags(data, "images of the split, train.py's", aliases=("--toy_images",))
    data.add_argument("--seed", type=int, default=0, help="toy world seed (train.py's --seed; default: 0)")
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        help="a trained WeCLIP or WeCLIP+ folder or Hub id (RFM)",
    )
    model.add_argument(
        "--clip_model_name_or_path", help="a bare CLIP (default: the toy world's, else ViT-B/16)"
    )
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="class names and CAM settings of a bare CLIP (a WeCLIP preset: WeCLIP+'s need --model), and the "
        "dataset's splits",
    )
    model.add_argument("--class_names", nargs="+", help=CLASS_NAMES_HELP)
    model.add_argument(
        "--background_names",
        nargs="+",
        help="background words of a bare CLIP, one prompt each (default: the preset's or the toy world's, else "
        "VOC's 25)",
    )
    model.add_argument(
        "--mode", choices=("cam", "rfm"), help="masks to write (default: rfm with --model, else cam)"
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="images per forward (default: 8; same-size images are batched)",
    )
    run.add_argument(
        "--num_workers", type=int, default=None, help="decoding processes (default: 2 on GPU, 0 on CPU)"
    )
    run.add_argument(
        "--num_overlays", type=int, default=0, help="overlays of the first N images (default: 0; -1: all)"
    )
    add_process_device_flag(run)
    run.add_argument("--save_to_disk", help="also save the dataset with DatasetDict.save_to_disk here")
    run.add_argument("--push_to_hub", action="store_true", help="push the dataset (DatasetDict.push_to_hub)")
    run.add_argument("--hub_dataset_id", help="default: the --output_dir folder name")
    run.add_argument("--hub_token", help="Hub token (default: the logged-in one); never written to disk")
    args = p.parse_args(argv)
    check_hub_token(p, args.hub_token)
    check_source_flags(p, args)
    check_device_fits_launch(p, args.device)
    if args.validation_split == args.split:  # one folder for both: the copies would replace the pseudo masks
        p.error(
            f"--validation_split {args.split!r} is the --split pseudo-labelled: give another split (or none)."
        )
    args.split_notes = check_split_names(p, args)
    args.toy = names_no_dataset(args)
    args.mode = args.mode or ("rfm" if args.model else "cam")
    if args.mode == "rfm" and not args.model:
        p.error("--mode rfm needs --model (a trained WeCLIP: the RFM uses its decoder)")
    if not args.model and args.preset and get_preset(args.preset).model_type == "weclip_plus":
        bare = ", ".join(sorted(name for name, preset in PRESETS.items() if preset.model_type == "weclip"))
        p.error(
            f"--preset {args.preset} is a WeCLIP+ preset, whose CAMs are weighted by a trained decoder (RFM+): "
            f"give --model (a trained WeCLIP+ folder), or a WeCLIP preset ({bare}) for a bare CLIP."
        )
    if args.model and (args.clip_model_name_or_path or args.class_names or args.background_names):
        p.error("--model fixes the CLIP and the class names: drop --clip_model_name_or_path / --class_names")
    check_preset_fits_data(p, args)
    check_output_path(p, "--output_dir", args.output_dir)
    check_output_dir(p, args)
    return args


def check_split_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Refuse a --split or --validation_split that the dataset written could not be read back as a split of its own:
    its folder keeps the name, which `datasets`' imagefolder reads as no split (unlabeled, trainaug) or as the same
    split as the other one's (val beside validation). Returns the notes on names it reads as another split (VOC's
    train_aug as train, val as validation: `imagefolder_split_name`), which the main process prints."""
    notes = []
    where = "`datasets`' imagefolder (train.py --data_dir, load_dataset('imagefolder', data_dir=...))"
    remedy = (
        "Save the split under a name it reads (train, validation, test), e.g. "
        "DatasetDict({'train': dataset[name]}).save_to_disk(path), then --dataset_path path."
    )
    read: dict[str, str] = {}
    for flag, name in (("--split", args.split), ("--validation_split", args.validation_split)):
        if name in (None, "none"):
            continue
        split = imagefolder_split_name(name)
        if split is None:
            parser.error(
                f"{flag} {name!r}: the dataset written keeps the split's name, and {where} reads a folder {name!r} "
                "as no split (beside the other splits it is left out; alone, every file of the folder, masks too, "
                f"is read as one 'train' split). {remedy}"
            )
        if split in read.values():
            parser.error(
                f"{flag} {name!r}: {where} reads it back as split {split!r}, as the other split written: the two "
                f"would be one. {remedy}"
            )
        read[name] = split
        if split != name:
            notes.append(
                f"Note: {flag} {name!r} is written as a folder {name!r}, which {where} reads back as split {split!r}."
            )
    return notes


def check_output_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an --output_dir that is, holds or lies inside the input dataset's folder, and, unless
    --overwrite_output_dir, a non-empty one that this script did not write (no ``.state/``): the run
    deletes the files of its split folders (``<split>/images``, ``masks``) that it did not write."""
    out = Path(args.output_dir).resolve()
    inputs = {flag: getattr(args, flag) for flag in DATA_SOURCE_FLAGS if getattr(args, flag)}
    for flag, value in inputs.items():  # a --dataset_name that is no local folder: a Hub id
        data = Path(value).resolve()
        if data.exists() and (out.is_relative_to(data) or data.is_relative_to(out)):
            where = "is" if out == data else "lies inside" if out.is_relative_to(data) else "holds"
            parser.error(
                f"--output_dir {args.output_dir!r} {where} the input dataset (--{flag} {value!r}), whose files "
                "the run would replace or delete: choose an --output_dir outside it."
            )
    # its own: it holds the state folder, which the main process makes first (so that another process of the run,
    # checking while the main one starts writing, finds it as its own too: no barrier precedes this on GPUs)
    foreign = out.is_dir() and any(out.iterdir()) and not (out / STATE_DIR).is_dir()
    if foreign and not args.overwrite_output_dir:
        parser.error(
            f"--output_dir {args.output_dir!r} is not empty ({folder_contents(out)}) and was not written by this "
            f"script (it has no {STATE_DIR}/): the run would delete the files of its split folders that it did not "
            "write. Choose a new or empty folder, or give --overwrite_output_dir to write into it all the same."
        )


# ---- data -------------------------------------------------------------------------------------------


def load_splits(args, num_classes: int, ignore_index: int, class_names, state: PartialState) -> dict:
    """{split: (dataset with image_labels and a ``source_row`` column, its columns, its unreadable rows, whether
    it is pseudo-labelled)}: --split and, if asked, --validation_split (which needs masks). Unreadable images are
    dropped and listed (the LabelSummary; `unreadable_rows`)."""
    source = DataSource.from_args(args, toy_sizes=(args.toy_train_images, args.toy_val_images))
    # a --validation_split the dataset lacks is refused by load_dataset_splits; without one, "none" asks for none
    # (and for no note on how train.py would find one)
    train, val, _ = load_dataset_splits(
        source,
        train_split=args.split,
        validation_split=args.validation_split or "none",
        preset=args.preset,
        dataset_classes=False,  # the model's classes
    )
    if args.max_samples:
        train = train.select(range(min(args.max_samples, len(train))))
    splits = {}
    for name, dataset, is_pseudo in ((args.split, train, True), (args.validation_split, val, False)):
        if dataset is None or not name:
            continue
        columns = resolve_columns(
            dataset.column_names,
            args.image_column,
            args.mask_column,
            args.labels_column if is_pseudo else None,
            require_mask=not is_pseudo,
            features=dataset.features,
            class_names=class_names,
            example=lambda dataset=dataset: dataset[0],
        )
        num_rows = len(dataset)
        dataset = dataset.add_column("source_row", list(range(num_rows)))  # names stay when rows are dropped
        with state.main_process_first():
            dataset, summary = add_image_labels(
                dataset,
                columns,
                num_classes,
                ignore_index,
                args.labels_zero_based,
                class_names=class_names,
                skip_unreadable=True,
            )
        state.print(f"{name}: {summary}")
        unreadable = unreadable_rows(num_rows, dataset["source_row"], summary.unreadable)
        splits[name] = (dataset, columns, unreadable, is_pseudo)
    return splits


def unreadable_rows(num_rows: int, kept: list[int], sources: list[str]) -> dict[str, str]:
    """The rows of a split of ``num_rows`` that were dropped as unreadable (those not ``kept``), by `example_name`,
    each with its file or row as ``sources`` (the LabelSummary's, in row order) names it."""
    dropped = sorted(set(range(num_rows)) - set(kept))
    return {example_name(row): source for row, source in zip(dropped, sources, strict=True)}


def row_record(example: dict, columns, split: str) -> dict:
    """What a row's outputs are made from: ``{"source": its image file or row, "input": the content_fingerprint
    of its image and mask and its image-level labels}``."""
    mask = example.get(columns.mask) if columns.mask else None
    return {
        "source": file_path(example[columns.image]) or row_name(example["source_row"], split),
        "input": {
            "image": content_fingerprint(example[columns.image]),
            "mask": content_fingerprint(mask),
            "image_labels": list(example["image_labels"]),
        },
    }


class LabelledImages(Dataset):
    """Rows of a split (image-level labels added), at ``positions``: the image normalized with ``normalization``
    [3, H, W], the RGB image, the mask if any (checked as it is read: `read_example`), multi-hot labels [C], the
    stored image value (copied to the output), the row's `row_record` and its position."""

    def __init__(
        self,
        dataset,
        columns,
        num_classes: int,
        ignore_index: int,
        positions: list[int],
        split: str,
        normalization,
    ):
        self.dataset, self.columns, self.num_classes, self.ignore_index = (
            dataset,
            columns,
            num_classes,
            ignore_index,
        )
        self.positions, self.split, self.normalization = positions, split, normalization

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        example = self.dataset[self.positions[i]]
        row = row_name(example["source_row"], self.split)
        image, mask = read_example(
            example, self.columns, row, self.dataset.features, self.num_classes, self.ignore_index
        )
        return {
            "position": self.positions[i],
            "row": example["source_row"],
            "record": row_record(example, self.columns, self.split),
            "stored": example[self.columns.image],
            "rgb": image,
            "mask": mask,
            "pixel_values": normalize(image, self.normalization),
            "image_labels": example["image_labels"],
            "class_labels": multi_hot(example["image_labels"], self.num_classes),
        }


# ---- model ------------------------------------------------------------------------------------------


def load_model(
    args, state: PartialState, device: torch.device
) -> tuple[WeCLIPForSemanticSegmentation, WeCLIPImageProcessor]:
    """The trained WeCLIP of --model and its image processor, or a bare CLIP with the preset's (or the toy world's)
    classes and the default processor, on ``device`` (`process_device`; notes and warnings given by the main
    process)."""
    if args.model:
        with naming_the_model_flag(args.model, "--model"):
            model = AutoModelForSemanticSegmentation.from_pretrained(args.model)
        model = model.to(device).eval()
        if args.toy:
            check_toy_classes(model.config.class_names, args.model)
    else:
        model = bare_clip_model(args, state.print).to(device).eval()
    processor = WeCLIPImageProcessor.from_saved_or_default(
        args.model,
        **processor_settings(model.config),
        on_missing=None if state.is_main_process else lambda: None,
    )
    return model, processor


def bare_clip_model(args, note: Callable[[str], None] = print) -> WeCLIPForSemanticSegmentation:
    """A WeCLIP on the bare CLIP of --clip_model_name_or_path with the preset's (or the toy world's) classes
    (``note`` prints where they come from, when from the dataset)."""
    preset = args.preset or ("toy" if args.toy else None)
    kwargs = with_class_names(preset_config_kwargs(preset), args.class_names)
    # without a preset or --class_names: a dataset's ClassLabel names, as train.py takes them (else VOC's)
    if preset is None and args.class_names is None:
        source = DataSource.from_args(args)
        names = load_dataset_splits(
            source, train_split=args.split, validation_split="none", labels_column=args.labels_column
        )[2]
        if names:
            note(dataset_classes_note(names["class_names"]))
            kwargs.update(names)
    if args.background_names:
        kwargs["background_names"] = args.background_names
    clip = args.clip_model_name_or_path
    if clip is None:
        clip = default_clip_model(args.toy)
    return WeCLIPForSemanticSegmentation.from_clip(clip, **kwargs)


@torch.no_grad()
def pseudo_masks(
    model, items: list[dict], mode: str, max_size: dict | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo masks [B, H, W] and the CAMs [B, C, h, w] of same-size ``items`` (``mode`` "rfm": refined with the
    RFM of the model's decoder); images below one patch are zero-padded and the masks cropped back, images larger
    than ``max_size`` (the processor's input size) computed at that size and their masks upsampled."""
    pixel_values = torch.stack([item["pixel_values"] for item in items]).to(model.device)
    class_labels = torch.stack([item["class_labels"] for item in items])
    return image_pseudo_labels(model, pixel_values, class_labels, use_rfm=mode == "rfm", max_size=max_size)


# ---- outputs ----------------------------------------------------------------------------------------


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


def example_name(row: int) -> str:
    """The file name (without suffix) of the outputs of the dataset's row ``row``: ``000042``."""
    return f"{row:06d}"


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


def finished_outputs(out: Path, splits) -> list[Path]:
    """The files a finished run writes last, which make ``out`` a dataset: the splits' metadata, the report."""
    return [*(out / split / "metadata.jsonl" for split in splits), out / REPORT]


def record_path(out: Path, split: str, name: str) -> Path:
    """The record of an example, the mark that it is done."""
    return out / STATE_DIR / split / f"{name}.json"


def finish_split(out: Path, split: str, id2label: dict) -> list[dict]:
    """metadata.jsonl of a split from the records of every process and run, the image-level labels by class name
    (``id2label``: the masks' ids, which the names tell a second stage in another class order, whose labels would
    then disagree with the masks, from one in this order); files of examples without a record (an interrupted
    run's) removed. Returns the records."""
    records = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / STATE_DIR / split).glob("*.json"))
    ]
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


def overlay_path(out: Path, name: str) -> Path:
    """The overlay of the example named ``name`` (`example_name`)."""
    return out / "overlays" / f"{name}.png"


def missing_overlays(out: Path, dataset, todo: list[int], args, state: PartialState) -> set[int]:
    """The positions in ``dataset`` of this process's share that are done (not in ``todo``) and whose overlay is
    asked for (--num_overlays) but missing: an earlier run drew none."""
    rows = list(dataset["source_row"])  # one column read, not the images
    share = process_share(len(dataset), state.process_index, state.num_processes)
    return {
        i
        for i in set(share) - set(todo)
        if wants_overlay(rows[i], args.num_overlays)
        and not is_whole_image(overlay_path(out, example_name(rows[i])))
    }


def rows_to_do(
    out: Path, split: str, dataset, columns, unreadable: dict[str, str], args, state: PartialState
) -> list[int]:
    """The positions in ``dataset`` of this process's share that an earlier run did not do from the same input;
    with --overwrite_output_dir, the records of the others, and of rows this run does not have (``unreadable``
    among them: `unreadable_rows`), dropped first (refused without it: `check_recorded_inputs`,
    `check_no_other_rows`)."""
    rows = list(dataset["source_row"])  # one column read, not the images
    position = {example_name(row): i for i, row in enumerate(rows)}
    recorded = {p.stem: read_input_record(p) for p in (out / STATE_DIR / split).glob("*.json")}
    done, changed = check_recorded_inputs(
        out,
        {name: record for name, record in recorded.items() if name in position},
        lambda name: row_record(dataset[position[name]], columns, split),
        args.overwrite_output_dir,
    )
    check_no_other_rows(out, split, recorded.keys() - position.keys(), unreadable, args.overwrite_output_dir)
    share = process_share(len(dataset), state.process_index, state.num_processes)
    if args.overwrite_output_dir:
        drop_records(out, split, args, changed & {example_name(rows[i]) for i in share})
        if state.is_main_process:  # rows this run does not have: their files go in finish_split
            drop_records(out, split, args, recorded.keys() - position.keys())
    return [i for i in share if example_name(rows[i]) not in done]


def check_no_other_rows(
    out: Path, split: str, others: set[str], unreadable: dict[str, str], overwrite: bool
) -> None:
    """Refuse, unless ``overwrite`` (--overwrite_output_dir: their records are dropped), the records in ``out`` of
    rows of ``split`` that this run does not have: rows it skipped as unreadable (``unreadable``: their image or
    mask changed since an earlier run did them), or rows of an earlier run of more rows. The dataset written would
    list them as this run's."""
    if not others or overwrite:
        return
    if now_unreadable := sorted(others & unreadable.keys()):
        shown = some_of([f"{name!r}: {unreadable[name]}" for name in now_unreadable])
        raise ValueError(
            f"{out} holds the outputs of {counted(len(now_unreadable), 'row')} of split {split!r} that an earlier "
            f"run did and whose image or mask this run could not read ({shown}). Fix the files and re-run, or give "
            "--overwrite_output_dir to drop their outputs."
        )
    raise ValueError(
        f"{out} holds the outputs of {counted(len(others), 'row')} of split {split!r} that this run does not have "
        f"({some_of([repr(name) for name in sorted(others)])}: an earlier run's, of more rows: another "
        "--max_samples or toy size), which the dataset written would list as this run's. Re-run with the earlier "
        "inputs, choose another --output_dir, or give --overwrite_output_dir to drop them."
    )


def split_folders(split: str) -> tuple[str, ...]:
    """The folders (relative to --output_dir) that hold the files written for the examples of ``split``."""
    return f"{split}/images", f"{split}/masks", "overlays"


def drop_records(out: Path, split: str, args, names: set[str]) -> None:
    """--overwrite_output_dir: the records of examples to redo or drop and the files they list, before any is
    rewritten (a record of a version that listed none: its overlay by name, which that version wrote there)."""
    for name in names:
        listed = recorded_outputs(record_path(out, split, name), out, split_folders(split))
        if listed is None:
            listed = [out / "overlays" / f"{name}.png"] if split == args.split else []
        for path in [*listed, record_path(out, split, name)]:
            remove_file(path, out)


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


# ---- starting over (--overwrite_output_dir over a run with other settings) --------------------------


def earlier_run(out: Path) -> dict[str, dict[Path, list[Path]]]:
    """The example records of the run in ``out``, by split, each with the files it lists as written for its
    example. Raises ValueError where a record lists none (written by a version before records listed them, or
    damaged): which overlays that run wrote cannot be told from a user's own."""
    splits = sorted(p.name for p in (out / STATE_DIR).iterdir() if p.is_dir())
    check_no_links(out, splits)  # this run's outputs were checked; the earlier run's split folders may differ
    listed = {
        split: {
            path: recorded_outputs(path, out, split_folders(split))
            for path in sorted((out / STATE_DIR / split).glob("*.json"))
        }
        for split in splits
    }
    if unlisted := [path for records in listed.values() for path, files in records.items() if files is None]:
        raise ValueError(
            f"{out} holds a dataset of a run with other settings whose records do not list the files it wrote "
            f"({unlisted[0]}; written by an earlier version, or damaged): starting over there could delete "
            "overlays of your own. Choose another --output_dir."
        )
    return listed


def remove_earlier_run(out: Path, listed: dict[str, dict[Path, list[Path]]]) -> None:
    """Remove the earlier run ``listed`` (`earlier_run`): the folder marked unfinished and its metadata and report
    removed first (`mark_unfinished`); each example's files, then its record; the other files of its split
    folders (an interrupted run's: the run deletes them as its own); its settings last, so that an interrupted
    start-over leaves a folder the same command finishes. Other files in ``out`` stay, in overlays/ too."""
    num_examples = sum(len(records) for records in listed.values())
    print(f"--overwrite_output_dir: removing the {num_examples} examples of the earlier run in {out}")
    mark_unfinished(out, WRITER, finished_outputs(out, listed))
    for records in listed.values():
        for record, outputs in records.items():
            for path in [*outputs, record]:
                remove_file(path, out)
    for split in listed:
        for path in [*(out / split).glob("images/*"), *(out / split).glob("masks/*")]:
            remove_file(path, out)
    remove_file(out / STATE_DIR / SETTINGS, out)


def start_over(out: Path) -> Callable[[], None]:
    """The removal of the earlier run in ``out`` (`check_run_settings_or_start_over`'s ``start_over``)."""
    return functools.partial(remove_earlier_run, out, earlier_run(out))


# ---- main -------------------------------------------------------------------------------------------


def main(argv=None) -> dict | None:
    """Generate the pseudo-labelled dataset as the command line ``argv`` says; the main process returns the
    report."""
    # every process checks --output_dir (`check_output_dir`); the main process then makes its state folder first
    args = parse_args(argv)
    if args.model:  # before --output_dir is made
        check_model_argument(args.model, "--model")
    state = process_state(args.device)
    device = process_device(args.device, state)
    for note in args.split_notes:
        state.print(note)
    out = Path(args.output_dir)
    splits = [split for split in (args.split, args.validation_split) if split]
    check_no_links(out, [*splits, STATE_DIR, "overlays", REPORT])
    # 1. model and data, before anything is written: a run that fails there (a --split the dataset lacks, a
    # mistyped class name) leaves nothing
    model, processor = load_model(args, state, device)
    normalization = PixelNormalization.from_image_processor(processor)
    args.max_size = processor_input_size(processor)  # a larger photo's pseudo masks are computed at that size
    cfg = model.config
    class_names = list(zip(cfg.label_names, cfg.class_names))
    splits = load_splits(args, cfg.num_foreground_classes, cfg.semantic_loss_ignore_index, class_names, state)
    settings = {k: getattr(args, k) for k in ("model", "clip_model_name_or_path", "preset", "mode", "split")}
    settings.update(class_names=args.class_names, background_names=args.background_names)
    settings["image_processor"] = image_processor_setting(processor)
    models = ("model", "clip_model_name_or_path")
    check_run_settings_or_start_over(
        out,
        settings,
        state.is_main_process,
        state.wait_for_everyone,
        models,
        start_over=functools.partial(start_over, out) if args.overwrite_output_dir else None,
        removes="that run's dataset: its split folders' files, its records, report and the overlays they list",
        writer=WRITER,
    )
    if args.push_to_hub and state.is_main_process:  # fail now, not after labelling everything
        args.hub_dataset_id = create_hub_repo(
            args.hub_dataset_id or out.resolve().name, token=args.hub_token, repo_type="dataset"
        )

    num_workers = decoding_workers(args.num_workers, device.type)

    # 2. pseudo masks of --split, ground-truth masks of --validation_split: this process's share, without those
    # an earlier run did from the same input
    todo = {
        split: rows_to_do(out, split, dataset, columns, unreadable, args, state)
        for split, (dataset, columns, unreadable, _) in splits.items()
    }
    # and the overlays asked for of done rows of --split that an earlier run did not draw
    overlay_only = {
        split: missing_overlays(out, dataset, todo[split], args, state) if is_pseudo else set()
        for split, (dataset, _, _, is_pseudo) in splits.items()
    }
    # until `finish`, the folder is no dataset: neither the old one nor a mix of two runs
    if state.is_main_process:
        mark_unfinished(out, WRITER, finished_outputs(out, splits))
    state.wait_for_everyone()
    for split, (dataset, columns, _, is_pseudo) in splits.items():
        loader = DataLoader(
            LabelledImages(
                dataset,
                columns,
                cfg.num_foreground_classes,
                cfg.semantic_loss_ignore_index,
                sorted([*todo[split], *overlay_only[split]]),
                split,
                normalization,
            ),
            batch_size=args.batch_size,
            num_workers=num_workers,
            collate_fn=list,
        )
        for batch in tqdm(loader, desc=split, disable=not state.is_local_main_process):
            for group in group_by_size(batch):
                if is_pseudo:
                    write_pseudo_masks(model, group, args, out, split, overlay_only[split])
                else:
                    for item in group:
                        name = example_name(item["row"])
                        write_example(out, split, item, item["mask"], name, None, cfg.num_labels)

    # 3. metadata and report (main process), the dataset saved or pushed
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return finish(args, out, splits, cfg.id2label)


if __name__ == "__main__":
    run_resumable(main)
