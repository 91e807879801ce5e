"""The command line of examples/generate_pseudo_labels.py and its checks: the split names the dataset written
is read back by, an --output_dir that is no input dataset nor a folder of another's files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from weclip_hf.batch_jobs import STATE_DIR
from weclip_hf.data.folders import imagefolder_split_name
from weclip_hf.data.sources import DATA_SOURCE_FLAGS, names_no_dataset
from weclip_hf.presets import PRESETS, get_preset
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
    check_output_path,
    check_preset_fits_data,
    check_saved_model_flag,
    check_source_flags,
)
from weclip_hf.wording import folder_contents


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """The arguments of the command line ``argv`` (``description``: the help's first paragraph, the script's),
    checked."""
    p = argparse.ArgumentParser(description=description)
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
    check_saved_model_flag(p, args, "model")  # before the accelerate state, the data and --output_dir
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
