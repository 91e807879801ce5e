"""The command line of examples/segment.py: the model, the output folder, the inputs (--images, or a dataset
split), how to segment (batch, dtype, device, multi-scale, CRF) and what to draw, checked."""

from __future__ import annotations

import argparse

from weclip_hf.data.sources import names_no_dataset
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
    check_output_path,
    check_saved_model_flag,
    check_source_flags,
    check_switched_flags,
    resolve_crf_flags,
)


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """The arguments of the command line ``argv`` (``description``: the help's first paragraph, the script's),
    checked."""
    p = argparse.ArgumentParser(description=description)
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
    check_saved_model_flag(p, args)  # before the accelerate state and the inputs
    check_output_path(p, "--output_dir", args.output_dir)
    check_switched_flags(p, args, {"scales": "msf", **dict.fromkeys(CRF_PARAMETER_FLAGS, "crf")})
    resolve_crf_flags(p, args)
    return args
