#!/usr/bin/env python
"""Segment images with a trained WeCLIP or WeCLIP+: one palette PNG label map per image, optional overlays,
per-class fractions.

    python examples/segment.py --model_name_or_path outputs/weclip-toy --images photos/ --output_dir seg
    python examples/segment.py --model_name_or_path weclip-voc --images "photos/**/*.jpg" --msf --crf \\
        --num_overlays 20 --output_dir seg
    accelerate launch examples/segment.py --model_name_or_path weclip-voc --dataset_name jxie/pascal-voc-2012 \\
        --split validation --dtype bfloat16 --output_dir seg-voc      # the processes split the images

The device: accelerate's (each process's own GPU under `accelerate launch`, else a GPU where there is one), or
--device (cpu, cuda, cuda:N, mps; one that torch does not find here is refused before the model loads). Several
processes take every n-th input each (`accelerate launch`; on CPUs: ``accelerate launch --multi_gpu
--num_processes N examples/segment.py --device cpu``, as ``accelerate launch --cpu`` starts one process).

Inputs: folders (searched recursively, linked folders too; hidden files and folders, and the output folders of
earlier runs (of one into the folder itself its labels/ and overlays/), left out; a file is named by its path
there, links not followed), files and glob patterns (``--images``), or a split of a Hub dataset, imagefolder
or saved dataset. Images are read as the "image-segmentation" pipeline reads them (EXIF orientation,
grayscale, CMYK, 16-bit, images below one patch); a file that cannot be read (a broken link too) is skipped
and listed by its path, never fatal (one an earlier run did is refused, its outputs kept, or with
--overwrite_output_dir dropped and skipped). What this script writes in --output_dir (labels/, overlays/,
.state/) is never an input: --output_dir may lie inside an --images folder, or be it. The script writes no
links there: a link among its outputs (those folders or what they hold, class_fractions.json) is refused, as
it would write into another folder.

Outputs in --output_dir: ``labels/<name>.png`` (palette PNG whose pixel values are the ids of the model's
``config.id2label``; ``<name>``: the path relative to the inputs' common folder without its suffix, with it where
two inputs would share a name, whatever its letter case or Unicode normalization (``a.jpg``, ``a.png``,
``a.png.png``; ``Photo.jpg``, ``photo.png``, or café with é composed or not: one file on macOS and Windows), or the
row number of a dataset; paths that differ in case or normalization only are refused), ``overlays/<name>.png``
for the first --num_overlays inputs (a re-run draws those that done inputs lack), and ``class_fractions.json`` (per image and overall: the fraction of pixels of each class; the skipped inputs with
the reason). Re-running the same command after an interruption continues: images whose label map exists are skipped
(every file is written atomically, flushed to disk first; one that cannot be read, empty or cut short by a power
loss, is redone), provided the label map was made from the same image: ``.state/inputs/<name>.json`` records each
one's input by its content (size and SHA-256 of its bytes). A label map of another input of the same name (a
changed file, another folder) is refused, or with --overwrite_output_dir replaced. A re-run with other settings, or
with another model saved at the same --model_name_or_path folder (its weights and config.json are recorded by their
SHA-256, its image processor by its settings; a Hub id's of the revision it resolves to), is refused, or with
--overwrite_output_dir starts over: it removes the earlier run's label maps, overlays, records and report, the files
each input's record lists as written for it (before it wrote them), never other files of the folder.

Phases: arguments -> inputs -> model -> segmentation loop (each process its share) -> report (main process).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path, PurePosixPath

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
    decoding_workers,
    group_by_size,
    image_processor_setting,
    is_whole_image,
    process_share,
    read_input_record,
    read_skipped,
    recorded_outputs,
    remove_file,
    remove_temporary_files,
    run_resumable,
    save_image,
    save_json,
    save_overlay,
    some_of,
    wants_overlay,
    write_skipped,
)
from weclip_hf.crf import crf_refine_labels
from weclip_hf.data.columns import IMAGE_COLUMNS
from weclip_hf.data.decoding import (
    UnreadableImageError,
    decode_image,
    describe,
    file_path,
    row_name,
    undecoded,
)
from weclip_hf.data.loading import DataSource, load_dataset_splits, names_no_dataset
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.image_reading import to_rgb_uint8
from weclip_hf.inference import image_logits, multiscale_flip_logits
from weclip_hf.script_arguments import (
    CRF_PARAMETER_FLAGS,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    WEIGHT_DTYPES,
    add_crf_parameter_flags,
    add_data_source_flags,
    add_multiscale_flags,
    add_process_device_flag,
    check_device_fits_launch,
    check_model_argument,
    check_output_path,
    check_source_flags,
    check_switched_flags,
    crf_overrides,
    first_paragraph,
    naming_the_model_flag,
    process_device,
    process_state,
    resolve_crf_flags,
    scales_in_effect,
)
from weclip_hf.visualization import (
    fractions_from_counts,
    label_map_image,
    overlay_figure,
    present_class_cams,
)
from weclip_hf.wording import counted

IMAGE_FOLDERS = ("labels", "overlays")  # the images this script writes in --output_dir
OUTPUT_FOLDERS = (*IMAGE_FOLDERS, STATE_DIR)  # all it writes there, with class_fractions.json
REPORT = "class_fractions.json"
OUTPUT_SUFFIXES = (".png", ".json")  # of an input's files: its label map and overlay, its record
MODEL_SETTINGS = ("model_name_or_path",)  # the settings that name a model: its weights are recorded too


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--model_name_or_path", required=True, help="a trained WeCLIP or WeCLIP+ folder or Hub id")
    p.add_argument(
        "--output_dir",
        required=True,
        help="where labels/, overlays/ and class_fractions.json go (a re-run continues there)",
    )
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace the label maps made from other inputs of the same names, and start over where the folder "
        "holds a run with other settings (both refused without it)",
    )
    source = p.add_argument_group("inputs (--images, or a dataset split)")
    source.add_argument(
        "--images",
        nargs="+",
        help="image files, folders (recursive) and glob patterns (the outputs in --output_dir left out)",
    )
    add_data_source_flags(source)
    source.add_argument("--dataset_config_name", help=DATASET_CONFIG_HELP)
    source.add_argument(
        "--split", default="validation", help="the dataset split to segment (default: validation)"
    )
    source.add_argument("--image_column", help=IMAGE_COLUMN_HELP)
    p.add_argument(
        "--batch_size", type=int, default=8, help="images per forward (8; same-size images are batched)"
    )
    p.add_argument(
        "--dtype",
        choices=WEIGHT_DTYPES,
        default="float32",
        help="dtype of the model weights (default: float32, on every device; on a GPU, bfloat16 halves their "
        "memory)",
    )
    add_process_device_flag(p)
    add_multiscale_flags(p)
    p.add_argument(
        "--crf",
        action="store_true",
        help="dense CRF post-processing (weclip_hf.crf); memory per pixel grows with the classes: ~800 bytes more "
        "for 21 classes, ~1,900 for 81 (12 MP: 9.6 GB, 23 GB; docs/scripts.md, Segmenting a folder of images)",
    )
    add_crf_parameter_flags(
        p,
        "CRF parameters that the --crf_* flags override: WeCLIP's evaluation (weclip, the default) or DeepLab's",
    )
    p.add_argument("--num_overlays", type=int, default=0, help="overlays of the first N inputs (0; -1: all)")
    p.add_argument(
        "--num_workers", type=int, default=None, help="decoding processes (default: 2 on GPU, 0 on CPU)"
    )
    args = p.parse_args(argv)
    if bool(args.images) != names_no_dataset(args):
        p.error("give either --images or one of --dataset_name / --data_dir / --dataset_path")
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    check_source_flags(p, args)
    check_device_fits_launch(p, args.device)
    check_output_path(p, "--output_dir", args.output_dir)
    check_switched_flags(p, args, {"scales": "msf", **dict.fromkeys(CRF_PARAMETER_FLAGS, "crf")})
    resolve_crf_flags(p, args)
    return args


# ---- inputs -----------------------------------------------------------------------------------------


def find_image_files(
    patterns: list[str], output_dir: Path, note: Callable[[str], None] = print
) -> list[Path]:
    """Files of ``--images``, sorted, once each (a file reached by several paths, through links: by `link_last`'s
    first), by their paths as given (made absolute; links not followed, so that a linked file is named as it is in
    the folder): files named as they are; in folders (recursive, linked folders too: `folder_files`) and glob
    matches, the files with an image suffix PIL knows. What this script writes in ``output_dir``
    (`OUTPUT_FOLDERS`) is left out, so that an --output_dir inside an --images folder is not segmented by the next
    run, and so are the label maps and overlays of other runs (`without_earlier_outputs`); broken links are kept,
    to be listed as unreadable. ``note`` prints the folders left out."""
    suffixes = set(Image.registered_extensions())
    written = [(output_dir / folder).resolve() for folder in OUTPUT_FOLDERS]
    found: dict[Path, Path] = {}  # the file (links followed) -> the path it is named by
    for pattern in patterns:
        if Path(pattern).is_file():  # named as it is, whatever its suffix
            images = [Path(pattern)]
        else:
            matches = (
                [Path(pattern)]
                if Path(pattern).is_dir()
                else [Path(m) for m in glob.glob(pattern, recursive=True)]
            )
            files = [f for m in matches for f in (folder_files(m, output_dir, note) if m.is_dir() else [m])]
            images = [f for f in files if is_file_or_broken_link(f) and f.suffix.lower() in suffixes]
            images = without_earlier_outputs(images, output_dir, note)
        images = [f for f in images if not any(resolved(f).is_relative_to(folder) for folder in written)]
        if not images and not os.path.lexists(pattern) and not glob.has_magic(pattern):
            raise FileNotFoundError(f"--images {pattern!r}: no such file or folder.")
        if not images:
            raise FileNotFoundError(
                f"--images {pattern!r}: no image file there (the outputs in --output_dir {str(output_dir)!r} "
                "are left out)."
            )
        for image in map(Path, map(os.path.abspath, images)):
            found[resolved(image)] = min(found.get(resolved(image), image), image, key=link_last)
    return sorted(found.values())


def without_earlier_outputs(
    files: list[Path], output_dir: Path, note: Callable[[str], None] = print
) -> list[Path]:
    """``files`` but the label maps and overlays of the runs they are in (`earlier_run_of`): a folder or glob
    pattern over a folder that was a run's --output_dir, or over a run folder (``photos/**/*.png``), would segment
    them as photos. ``note`` names each run folder left out but ``output_dir`` (`find_image_files` leaves out this
    run's outputs)."""
    this_run = output_dir.resolve()
    runs = {f: run for f in files if (run := earlier_run_of(f)) is not None and run.resolve() != this_run}
    for run in sorted(set(runs.values())):
        note(
            f"Note: left out the labels/ and overlays/ of {run}: the outputs of a run ({STATE_DIR}/{SETTINGS})."
        )
    return [f for f in files if f not in runs]


def earlier_run_of(path: Path) -> Path | None:
    """The folder of the run (its ``.state/settings.json``) whose labels/ or overlays/ hold ``path``, else None."""
    for folder in path.parents:
        if folder.name in IMAGE_FOLDERS and (folder.parent / STATE_DIR / SETTINGS).is_file():
            return folder.parent
    return None


def link_last(path: Path) -> tuple[bool, Path]:
    """The order in which the paths of one file name it: a path without links first, then in sorted order."""
    return path != resolved(path), path


def folder_files(
    folder: Path, output_dir: Path, note: Callable[[str], None] = print, above: frozenset[Path] = frozenset()
) -> list[Path]:
    """The files under ``folder``, recursively, as glob patterns find them: hidden files and folders (``.name``)
    left out, and so are the folders that hold an earlier run of this script or generate_pseudo_labels.py (their
    ``.state/settings.json``: label maps, overlays, masks), named in a note; this run's ``output_dir`` is scanned
    whatever its state (its outputs are left out by `find_image_files`), so that every process, and every run, finds
    the same files while the main process writes its state; ``note`` prints the folders left out. Linked folders are
    followed, except a link to a folder it is in (``above``: the folders it is in, links followed), so that the scan
    ends."""
    if folder.resolve() in above:
        return []
    above = above | {folder.resolve()}
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():  # a file, a link to one, or a broken link
            files.append(entry)
        elif (entry / STATE_DIR / SETTINGS).is_file() and entry.resolve() != output_dir.resolve():
            note(f"Note: left out {entry}: the output folder of a run ({STATE_DIR}/{SETTINGS}), not photos.")
        else:
            files += folder_files(entry, output_dir, note, above)
    return files


def is_file_or_broken_link(path: Path) -> bool:
    """A file, or a link to nothing (unreadable: listed as skipped, not dropped silently)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def resolved(path: Path) -> Path:
    """The absolute path of a file, links followed (a broken link: itself, in its resolved folder)."""
    return path.resolve() if path.exists() else path.parent.resolve() / path.name


def output_names(paths: list[Path]) -> list[str]:
    """Distinct output names, also to a file system that ignores letter case and Unicode normalization (macOS's,
    Windows'): paths relative to the files' common folder without suffix (``sub/a``); where that name is another
    file's too, whatever the case or normalization (`folded`: a.jpg, a.png; Photo.jpg, photo.png; café.jpg with é
    composed, café.png with e and an accent), or another file's name with suffix (a.png, a.png.png), or where its
    outputs would be the folder of another's (scan.jpg beside scan.png/page1.png: labels/scan.png), the file keeps
    its suffix (``a.jpg``, ``a.png``, ``a.png.png``; ``scan.jpg``); where they would be one all the same, refused.
    Paths that differ in letter case or normalization only (A.jpg, a.jpg, which only a file system that keeps them
    apart holds) are refused: their outputs would be one file on the other kind."""
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    relative = [p.relative_to(root).as_posix() for p in paths]
    same_case = collections.defaultdict(list)
    for path in relative:
        same_case[folded(path)].append(path)
    if clashes := [sorted(group) for group in same_case.values() if len(group) > 1]:
        raise ValueError(
            f"Input paths that differ in letter case or Unicode normalization only: {clashes[:5]}. Their outputs "
            "would be one file where those are ignored (macOS, Windows): rename one, or segment them in separate "
            "runs."
        )
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
    counts = collections.Counter(map(folded, stems))
    with_suffix = {i for i, stem in enumerate(stems) if counts[folded(stem)] > 1}
    # a stem equal to a relative path kept, or whose output files are another name's folder (scan.jpg and
    # scan.png/page1.png: labels/scan.png): that file keeps its suffix too (grows, so it ends)
    while True:
        names = [relative[i] if i in with_suffix else stem for i, stem in enumerate(stems)]
        taken, folders = {folded(relative[i]) for i in with_suffix}, output_folders(names)
        clashing = {
            i
            for i, stem in enumerate(stems)
            if i not in with_suffix and (folded(stem) in taken or clashes_with_folder(stem, folders))
        }
        if not clashing:
            break
        with_suffix |= clashing
    if len(set(map(folded, names))) != len(names):  # never: one output would overwrite another's
        raise RuntimeError(f"output names not unique: {sorted(n for n in names if names.count(n) > 1)}")
    if clashes := [relative[i] for i, name in enumerate(names) if clashes_with_folder(name, folders)]:
        raise ValueError(
            "Inputs whose outputs would be the folders of other inputs' outputs, with their suffixes too: "
            f"{clashes[:5]} (a.png, a.jpg and a folder a.png.png/). Rename one, or segment them in separate runs."
        )
    return names


def folded(name: str) -> str:
    """``name`` as a file system that ignores letter case and Unicode normalization compares it (macOS's, Windows'):
    composed (NFC), then in lower case as `str.lower` makes it, character by character (``casefold`` would also
    equate ß and ss, which those file systems keep apart)."""
    return unicodedata.normalize("NFC", name).lower()


def output_folders(names: list[str]) -> set[str]:
    """The folders of the outputs of ``names`` (``sub`` of ``sub/a``), `folded`."""
    return {folded(str(parent)) for name in names for parent in PurePosixPath(name).parents}


def clashes_with_folder(name: str, folders: set[str]) -> bool:
    """Whether an output file of ``name`` (``<name>.png``, its record ``<name>.json``) would be one of the
    ``folders`` of other outputs (`output_folders`), whatever the letter case or normalization."""
    return any(folded(f"{name}{suffix}") in folders for suffix in OUTPUT_SUFFIXES)


def input_record(stored, where, position: int) -> dict | None:
    """What the input at ``position`` is: ``{"source": its file or row, "input": its content_fingerprint}``; None
    where its file cannot be read (gone, a broken link: `ImageInputs` lists it as skipped)."""
    value = stored[position]
    try:
        fingerprint = content_fingerprint(value)
    except OSError:
        return None
    return {"source": file_path(value) or where(position), "input": fingerprint}


class ImageInputs(Dataset):
    """The inputs at ``positions`` as the processor reads them: each item the input's position, its
    `input_record`, the RGB image uint8 [H, W, 3] (EXIF orientation applied) and its ``pixel_values`` [3, h, w],
    or why it cannot be read."""

    def __init__(self, stored, where, positions: list[int], processor: WeCLIPImageProcessor):
        self.stored, self.where, self.positions, self.processor = stored, where, positions, processor

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        position = self.positions[i]
        try:
            rgb = self.read(position)
        except UnreadableImageError as err:
            return {"position": position, "error": f"{err.source}: {err.reason}"}
        inputs = self.processor(images=[rgb], input_data_format="channels_last", return_tensors="pt")
        record = input_record(self.stored, self.where, position)
        return {"position": position, "record": record, "rgb": rgb, "pixel_values": inputs["pixel_values"][0]}

    def read(self, position: int) -> np.ndarray:
        """The RGB image uint8 [H, W, 3] of an input; `UnreadableImageError` naming it where it cannot be read."""
        value, row = self.stored[position], self.where(position)
        column = getattr(self.stored, "column", None)  # files of --images: named by their path alone
        image = decode_image(value, column, row)
        try:
            return to_rgb_uint8(image)
        except (ValueError, TypeError) as err:  # decoded, but not an image the processor reads
            raise UnreadableImageError(describe(value, column, row), f"{type(err).__name__}: {err}") from err


class DatasetImages:
    """The stored images of a dataset split, read one at a time (``{"bytes", "path"}`` values for `decode_image`)."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = undecoded(dataset, [column]), column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][self.column]


def image_column(available: list[str], given: str | None) -> str:
    """The split's image column: ``given`` (--image_column), else the first of `IMAGE_COLUMNS` it has, as train.py
    and evaluate.py pick it (`img`, `pixel_values`, ...)."""
    if given is not None and given not in available:
        raise ValueError(f"--image_column {given!r} not found; columns: {available}.")
    found = given or next((c for c in IMAGE_COLUMNS if c in available), None)
    if found is None:
        raise ValueError(
            f"No image column found (looked for {list(IMAGE_COLUMNS)}); columns: {available}. Pass --image_column."
        )
    return found


def load_inputs(args, note: Callable[[str], None] = print) -> tuple:
    """(stored images: paths or a `DatasetImages`, output names, position -> description for messages); ``note``
    prints the folders of --images left out (`folder_files`)."""
    if args.images:
        paths = find_image_files(args.images, Path(args.output_dir), note)
        return [str(p) for p in paths], output_names(paths), functools.partial(row_name, split=None)
    source = DataSource.from_args(args)
    _, split, _ = load_dataset_splits(
        source, validation_split=args.split, need_train=False, dataset_classes=False
    )
    if split is None:
        raise ValueError(f"--split {args.split!r} not found in the dataset.")
    column = image_column(split.column_names, args.image_column)
    digits = max(6, len(str(len(split) - 1)))
    names = [f"{i:0{digits}d}" for i in range(len(split))]
    return (
        DatasetImages(split, column),
        names,
        functools.partial(dataset_row, split=args.split, dataset=source.name),
    )


def dataset_row(index: int, split: str, dataset: str) -> str:
    """``row 3 of split 'test' of data/voc``: a row as messages and input records name it."""
    return f"{row_name(index, split)} of {dataset}"


# ---- model and segmentation -------------------------------------------------------------------------


def load_model(
    args, state: PartialState, device: torch.device
) -> tuple[WeCLIPForSemanticSegmentation, WeCLIPImageProcessor]:
    """The model of ``--model_name_or_path`` in evaluation mode on ``device`` (`process_device`), and its image
    processor (the warning of a folder without one given by the main process)."""
    check_model_argument(args.model_name_or_path)
    with naming_the_model_flag(args.model_name_or_path):
        model = AutoModelForSemanticSegmentation.from_pretrained(
            args.model_name_or_path, dtype=getattr(torch, args.dtype)
        )
    model = model.to(device).eval()
    processor = WeCLIPImageProcessor.from_saved_or_default(
        args.model_name_or_path,
        **processor_settings(model.config),
        on_missing=None if state.is_main_process else lambda: None,
    )
    return model, processor


@torch.no_grad()
def segment(model, processor, items: list[dict], args) -> list[torch.Tensor]:
    """Label maps [H, W] (the images' own sizes) of same-size processed ``items``: (multi-scale + flip) logits,
    the processor's post-processing (padding cropped, bilinear upsampling), optional dense CRF, argmax."""
    pixel_values = torch.stack([item["pixel_values"] for item in items]).to(model.device, model.dtype)
    if args.msf:
        logits = multiscale_flip_logits(model, pixel_values, scales=args.scales)
    else:
        logits = image_logits(model, pixel_values)
    sizes = [item["rgb"].shape[:2] for item in items]
    outputs = processor.post_process_semantic_segmentation(
        {"logits": logits.float()}, target_sizes=sizes, return_segmentation_scores=args.crf
    )
    if not args.crf:
        return outputs
    return [
        crf_refine_labels(
            torch.from_numpy(item["rgb"]).to(model.device).permute(2, 0, 1).float(),
            out.segmentation_scores.softmax(dim=0),
            args.crf_params,
        )
        for item, out in zip(items, outputs)
    ]


def overlay(model, item: dict, labels: torch.Tensor) -> Image.Image:
    """The image, its label map over it, the legend, and a CAM heat map per predicted class."""
    present = torch.bincount(labels.flatten().cpu(), minlength=model.config.num_labels)[1:] > 0
    class_labels = present.float()[None]
    pixel_values = item["pixel_values"][None].to(model.device, model.dtype)
    with torch.no_grad():
        cams = model(
            pixel_values=pixel_values, class_labels=class_labels, use_rfm=False, return_loss=False
        ).cams[0]
    id2label = model.config.id2label
    return overlay_figure(
        item["rgb"],
        {"prediction": labels},
        id2label,
        cams=present_class_cams(cams, class_labels[0], id2label),
    )


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


# ---- starting over (--overwrite_output_dir over a run with other settings) --------------------------


def earlier_run(out: Path) -> dict[Path, list[Path]]:
    """The input records of the run in ``out``, each with the files it lists as written for its input. Raises
    ValueError where a record lists none (written by a version before records listed them, or damaged): which files
    that run wrote cannot be told from a user's own."""
    records = sorted((out / STATE_DIR / "inputs").rglob("*.json"))
    listed = {path: recorded_outputs(path, out, IMAGE_FOLDERS) for path in records}
    if unlisted := [path for path, outputs in listed.items() if outputs is None]:
        raise ValueError(
            f"{out} holds outputs of a run with other settings whose records do not list the files it wrote "
            f"({unlisted[0]}; written by an earlier version, or damaged): starting over there could delete files of "
            "your own. Choose another --output_dir."
        )
    return listed


def remove_earlier_run(out: Path, listed: dict[Path, list[Path]]) -> None:
    """Remove the earlier run ``listed`` (`earlier_run`): each input's files, then its record; the report and the
    lists of skipped inputs; its settings last, so that an interrupted start-over leaves a folder the same command
    finishes. Other files in ``out`` stay, in labels/ and overlays/ too."""
    print(
        f"--overwrite_output_dir: removing the outputs of {counted(len(listed), 'input')} of the earlier run in "
        f"{out}"
    )
    for record, outputs in listed.items():
        for path in [*outputs, record]:
            remove_file(path, out)
    state = out / STATE_DIR
    for path in [out / REPORT, *sorted(state.glob("skipped-*.json")), state / SETTINGS]:
        remove_file(path, out)


def start_over(out: Path) -> Callable[[], None]:
    """The removal of the earlier run in ``out`` (`check_run_settings_or_start_over`'s ``start_over``)."""
    return functools.partial(remove_earlier_run, out, earlier_run(out))


# ---- main -------------------------------------------------------------------------------------------


def main(argv=None) -> dict | None:
    """Segment the inputs as the command line ``argv`` says; the main process returns the report."""
    args = parse_args(argv)
    state = process_state(args.device)
    device = process_device(args.device, state)
    out = Path(args.output_dir)
    check_no_links(out, [*OUTPUT_FOLDERS, REPORT])
    model, processor = load_model(args, state, device)
    args.scales = scales_in_effect(args.scales, model.config)
    settings = {k: getattr(args, k) for k in ("model_name_or_path", "dtype", "msf", "crf", "crf_preset")}
    # the CRF's overrides recorded only when given, so that a folder of an earlier version goes on
    if overrides := crf_overrides(args):
        settings["crf_overrides"] = overrides
    settings["scales"] = args.scales if args.msf else None
    settings["image_processor"] = image_processor_setting(processor)
    # the inputs before anything is written: a run without inputs leaves nothing
    values, names, where = load_inputs(args, state.print)
    check_run_settings_or_start_over(
        out,
        settings,
        state.is_main_process,
        state.wait_for_everyone,
        MODEL_SETTINGS,
        start_over=functools.partial(start_over, out) if args.overwrite_output_dir else None,
        removes="that run's label maps, overlays and report (the files its records list; other files stay)",
        writer="examples/segment.py",
    )

    # 1. inputs: this process's share, without those an earlier run did from the same input (one that cannot be
    # read now is refused, or with --overwrite_output_dir redone: its earlier outputs go, and it is listed as skipped)
    label_path = {name: out / "labels" / f"{name}.png" for name in names}
    record_path = {name: out / STATE_DIR / "inputs" / f"{name}.json" for name in names}
    position = {name: i for i, name in enumerate(names)}
    done, _ = check_recorded_inputs(
        out,
        {name: read_input_record(record_path[name]) for name in names if label_path[name].exists()},
        lambda name: input_record(values, where, position[name]),
        args.overwrite_output_dir,
    )
    overlay_path = {name: out / "overlays" / f"{name}.png" for name in names}
    check_foreign_overlays(out, names, done, args, overlay_path, record_path)
    share = process_share(len(names), state.process_index, state.num_processes)
    # a label map that cannot be read (empty or cut short: a power loss) is redone
    todo = [i for i in share if names[i] not in done or not is_whole_image(label_path[names[i]])]
    # a done input whose overlay is asked for and missing (an earlier run without --num_overlays): its overlay, of
    # the label map written
    overlay_only = {
        i
        for i in share
        if i not in todo
        and wants_overlay(i, args.num_overlays)
        and not is_whole_image(overlay_path[names[i]])
    }
    # an input redone: what an earlier record of its name lists goes before the new record is written (another
    # input's outputs, --overwrite_output_dir; an earlier attempt's, which this run may not write again); without
    # a list (no record, an earlier version's) its label map only: an overlay of that name may be a user's file
    for name in (names[i] for i in todo):
        listed = recorded_outputs(record_path[name], out, IMAGE_FOLDERS)
        for path in listed if listed is not None else [label_path[name]]:
            remove_file(path, out)
    state.print(
        f"{counted(len(names), 'input')}; this process segments {len(todo)} and draws "
        f"{counted(len(overlay_only), 'overlay')} of done "
        "ones (the others: done or another process's)"
    )
    num_workers = decoding_workers(args.num_workers, device.type)
    loader = DataLoader(
        ImageInputs(values, where, sorted([*todo, *overlay_only]), processor),
        batch_size=args.batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )

    # 2. segmentation: the record of the input first (with the files written for it), then the overlay, the
    # label map last (an input is done when its label map exists and its record names the same input)
    skipped = []
    for batch in tqdm(loader, desc="segmenting", disable=not state.is_local_main_process):
        skipped += [{"input": names[b["position"]], "reason": b["error"]} for b in batch if "error" in b]
        for group in group_by_size([b for b in batch if "error" not in b]):
            redone = [item for item in group if item["position"] not in overlay_only]
            predicted = iter(segment(model, processor, redone, args) if redone else [])
            for item in group:
                name = names[item["position"]]
                # an input of overlay_only has its label map: its overlay shows that one
                drawn_only = item["position"] in overlay_only
                labels = read_label_map(label_path[name]) if drawn_only else next(predicted)
                with_overlay = wants_overlay(item["position"], args.num_overlays)
                outputs = [overlay_path[name]] * with_overlay + [label_path[name]]
                save_json(
                    {**item["record"], OUTPUTS: [p.relative_to(out).as_posix() for p in outputs]},
                    record_path[name],
                )
                if with_overlay:
                    save_overlay(overlay(model, item, labels), overlay_path[name])
                if not drawn_only:
                    save_image(label_map_image(labels, model.config.num_labels), label_path[name])
    for entry in skipped:
        print(f"skipped {entry['input']}: {entry['reason']}")
    write_skipped(out, state.process_index, skipped)

    # 3. report: read back every label map (all processes' and earlier runs')
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    if others := other_inputs(out, names):
        print(
            f"Note: {out} also holds the outputs of {counted(len(others), 'input')} this run does not have "
            f"({some_of(others)}): "
            "an earlier run's, of other inputs or named from another common folder; class_fractions.json lists this "
            "run's."
        )
    return write_report(
        out, names, label_path, model.config.id2label, args.model_name_or_path, state.num_processes
    )


def check_foreign_overlays(
    out: Path,
    names: list[str],
    done: dict,
    args: argparse.Namespace,
    overlay_path: dict[str, Path],
    record_path: dict[str, Path],
) -> None:
    """Refuse, unless --overwrite_output_dir, to draw the overlay of an input that is not ``done`` over a file of its
    name in overlays/ (``overlay_path``) that no record of that input (``record_path``) lists as written: this script
    did not write it (train.py's overlays/ of a model folder, a user's file). Every process checks every input,
    before any image is written."""
    foreign = [
        f"overlays/{name}.png"
        for i, name in enumerate(names)
        if name not in done
        and wants_overlay(i, args.num_overlays)
        and overlay_path[name].exists()
        and overlay_path[name] not in (recorded_outputs(record_path[name], out, IMAGE_FOLDERS) or [])
    ]
    if foreign and not args.overwrite_output_dir:
        raise ValueError(
            f"{out} holds files not written by this script where it would draw this run's overlays "
            f"({some_of(foreign)}; train.py's overlays/ of a model folder, or your own): they would be replaced. "
            "Choose another --output_dir, or give --overwrite_output_dir to replace them."
        )


def other_inputs(out: Path, names: list[str]) -> list[str]:
    """The names of the inputs whose outputs ``out`` holds (their records) that are none of this run's ``names``:
    an earlier run's over other inputs, or over the same ones named from another common folder (an input from
    another folder added renames them all)."""
    records = (out / STATE_DIR / "inputs").rglob("*.json")
    recorded = {p.relative_to(out / STATE_DIR / "inputs").with_suffix("").as_posix() for p in records}
    return sorted(recorded - set(names))


def exit_status(report: dict | None) -> int:
    """1 when inputs were given but none could be segmented (every one skipped), else 0 (other processes: 0)."""
    return 1 if report is not None and report["num_images"] == 0 and report["skipped"] else 0


if __name__ == "__main__":
    run_resumable(main, exit_status)
