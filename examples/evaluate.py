#!/usr/bin/env python
"""Evaluate a saved WeCLIP or WeCLIP+ model: mIoU single-scale, multi-scale + flip, optional dense CRF, and the
pseudo labels (CAM without / with RFM); prints a per-class IoU table and writes JSON.

    python examples/evaluate.py --model_name_or_path outputs/weclip-toy             # toy validation split
    python examples/evaluate.py --model_name_or_path weclip-voc --dataset_name jxie/pascal-voc-2012 \\
        --preset voc --msf --output_json voc_val.json   # VOC evaluation: long side 512, scales 1.0 0.75, CRF

`--preset` takes the evaluation settings of `weclip_hf.presets` (long side, scales, CRF on or off); each flag
overrides its value (`--no-crf`, `--scales`, `--eval_long_side`).

The CRF runs with WeCLIP's evaluation setting unless told otherwise: `--crf_preset deeplab` starts from
DeepLab's, and every `--crf_<parameter>` flag overrides one field of `weclip_hf.crf.CRFParams`; with
`--crf`, the JSON records the parameters used under "crf".

Images are normalized with the statistics of the model folder's image processor (preprocessor_config.json,
the one training saved; WeCLIP's ImageNet statistics, with a note, for a folder without one).

Under `accelerate launch` (or torchrun) each process scores every num_processes-th image and the confusion matrices
are summed: the figures of one process, in a fraction of the time; the main process prints and writes them.
The device: accelerate's (each process's own GPU under a launch, else a GPU where there is one), or --device
(cpu, cuda, cuda:N, mps; one that torch does not find here is refused before the model loads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from contextlib import nullcontext
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForSemanticSegmentation

from weclip_hf import WeCLIPImageProcessor
from weclip_hf.data.batches import collate_by_size, process_subset
from weclip_hf.data.labelled_sets import LabelReading, evaluation_set
from weclip_hf.data.sources import DataSource, load_dataset_splits, names_no_dataset
from weclip_hf.data.toy import check_toy_classes
from weclip_hf.evaluation import MIOU_NAMES, evaluate_segmentation, processor_input_size
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.metrics import per_class_iou
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import PRESETS, EvaluationSettings, get_preset
from weclip_hf.script_arguments import (
    CRF_PARAMETER_FLAGS,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    MODEL_SCALES_HELP,
    add_crf_parameter_flags,
    add_data_source_flags,
    add_multiscale_flags,
    add_process_device_flag,
    at_least_one,
    check_device_fits_launch,
    check_output_path,
    check_preset_fits_model,
    check_saved_model_flag,
    check_source_flags,
    check_switched_flags,
    first_paragraph,
    fraction,
    naming_the_model_flag,
    process_device,
    process_state,
    resolve_crf_flags,
    scales_in_effect,
)


def evaluation_settings(preset: str | None, toy: bool) -> EvaluationSettings:
    """The evaluation settings the flags start from: the preset's; without one, the toy recipe's on the toy world,
    else no CRF; without a preset the images are resized as the model's image processor resizes them
    (`input_size`) and the scales are those of the model's preset (`scales_in_effect`), once it is loaded."""
    if preset or toy:
        return get_preset(preset or "toy").evaluation
    return EvaluationSettings(eval_long_side=None, msf_scales=(), crf=False)


def input_size(
    args: argparse.Namespace, image_processor: WeCLIPImageProcessor
) -> int | dict[str, int] | None:
    """What the images are resized to before prediction: ``--eval_long_side`` when given; else the preset's
    evaluation size (`Preset.input_size`: its long side, else its training crop, as train.py scores its models);
    else the ``size`` of the model's saved image processor (a long side, a short side or a fixed size: what the
    pipeline predicts on), or None (images kept at their size) for a processor that does not resize."""
    if args.eval_long_side is not None:
        return args.eval_long_side
    if args.preset:
        return get_preset(args.preset).input_size()
    return processor_input_size(image_processor)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument(
        "--model_name_or_path",
        required=True,
        help="a saved WeCLIP or WeCLIP+ folder (train.py's --output_dir) or Hub id",
    )
    add_data_source_flags(p, dataset_name="Hub dataset id (default: the toy world's validation split)")
    p.add_argument("--dataset_config_name", help=DATASET_CONFIG_HELP)
    p.add_argument(
        "--validation_split", default="validation", help="the split to score (default: validation)"
    )
    p.add_argument("--image_column", help=IMAGE_COLUMN_HELP)
    p.add_argument("--mask_column", help=MASK_COLUMN_HELP)
    p.add_argument(
        "--semantic_loss_ignore_index",
        type=int,
        help="the label id of the masks' ignored pixels, where not the model's (its config's, 255: VOC's void); no "
        "class id may equal it",
    )
    p.add_argument(
        "--labels_column",
        help=f"for the CAM / RFM pseudo labels: {LABELS_COLUMN_HELP}",
    )
    p.add_argument("--labels_zero_based", action="store_true", help="image-level ids are 0..C-1")
    toy_val_images = get_preset("toy").dataset.toy_sizes[1]
    p.add_argument(
        "--toy_val_images",
        type=at_least_one,
        help=f"toy world: images scored (default: {toy_val_images}, the toy recipe's validation images: give the "
        "training run's --toy_val_images if it set one; with --validation_split train the first training images)",
    )
    p.add_argument(
        "--train_val_split",
        type=fraction,
        help="score the rows of the training split that train.py's --train_val_split held out (a dataset without "
        "the validation split; give the training run's --seed too)",
    )
    p.add_argument(
        "--train_split", help="the split --train_val_split holds rows out of (default: the training run's)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="toy world seed, and the rows --train_val_split holds out (default: 0, the recipe's: give the training "
        "run's --seed if it set one; the model does not record it)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="evaluation settings of a weclip_hf preset (VOC: long side 512, scales 1.0 0.75, CRF on) and its "
        "dataset splits; the flags below override them. Default on the toy world: the toy preset's",
    )
    p.add_argument(
        "--eval_long_side",
        type=at_least_one,
        help="resize the long side to N before prediction (VOC: 512); default: the preset's, without --preset "
        "as the model's saved image processor resizes (what the pipeline predicts on)",
    )
    add_multiscale_flags(
        p, f"the preset's, VOC 1.0 0.75, toy 1.0 1.125; without --preset {MODEL_SCALES_HELP}"
    )
    p.add_argument(
        "--crf",
        action=argparse.BooleanOptionalAction,
        help="dense CRF post-processing (pure PyTorch); default: the preset's (VOC on), else off",
    )
    add_crf_parameter_flags(
        p,
        "CRF parameters that the --crf_* flags override: WeCLIP's evaluation (default) or DeepLab's; with the CRF "
        "on (--crf, or the preset's)",
    )
    p.add_argument(
        "--skip_empty_images",
        action=argparse.BooleanOptionalAction,
        help="leave out the images without any class, as COCO's official validation list does (default: the "
        "preset's, coco and coco-plus on, else off)",
    )
    p.add_argument("--pseudo_labels", action="store_true", help="also score CAM / RFM pseudo labels")
    p.add_argument("--batch_size", type=at_least_one, default=1, help="images per forward (default: 1)")
    p.add_argument(
        "--max_eval_samples",
        type=at_least_one,
        help="evaluate the first N images (N >= 1); those without any class among them are then left out with "
        "--skip_empty_images (the coco presets' default), as the output says",
    )
    p.add_argument(
        "--skip_unreadable_images",
        action="store_true",
        help="skip images and masks that cannot be read, listing them (default: an error naming the file)",
    )
    add_process_device_flag(p)
    p.add_argument(
        "--output_json",
        help="also write the results (mIoU of each mode, per-class IoU, settings) to this JSON file "
        "(default: none written)",
    )
    args = p.parse_args(argv)
    check_preset_fits_model(p, args)
    args.toy = names_no_dataset(args)
    check_source_flags(p, args)
    check_device_fits_launch(p, args.device)
    check_saved_model_flag(p, args)  # before the accelerate state, the model and the data
    if args.toy_val_images is None:
        args.toy_val_images = get_preset("toy").dataset.toy_sizes[1]
    settings = evaluation_settings(args.preset, args.toy)
    if args.eval_long_side is None:
        args.eval_long_side = settings.eval_long_side
    if args.crf is None:
        args.crf = settings.crf
    check_switched_flags(p, args, {"scales": "msf", **dict.fromkeys(CRF_PARAMETER_FLAGS, "crf")})
    if args.scales is None:
        args.scales = list(settings.msf_scales)
    resolve_crf_flags(p, args)
    if args.skip_empty_images is None:
        args.skip_empty_images = bool(args.preset) and get_preset(args.preset).dataset.skip_empty_images
    if args.output_json:
        check_output_path(p, "--output_json", args.output_json, folder=False)
    if args.output_json and Path(args.output_json).is_dir():
        p.error(
            f"--output_json {args.output_json} is a folder: give a file name, e.g. {args.output_json}/eval.json."
        )
    return args


def format_table(results: dict[str, dict], id2label: dict[int, str]) -> str:
    """Markdown table: one row per class, one column per mode, the mean last."""
    modes = list(results)
    lines = ["| class | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for i in range(len(id2label)):
        cells = [results[m]["per_category_iou"][i] for m in modes]
        lines.append(
            f"| {id2label[i]} | "
            + " | ".join("-" if math.isnan(c) else f"{100 * c:.1f}" for c in cells)
            + " |"
        )
    means = [results[m]["mean_iou"] for m in modes]  # None: no valid pixel (see evaluate_segmentation)
    lines.append(
        "| **mIoU** | " + " | ".join("**-**" if v is None else f"**{100 * v:.2f}**" for v in means) + " |"
    )
    return "\n".join(lines)


def other_classes_note(args: argparse.Namespace, config) -> str | None:
    """A note where ``--preset`` is of other classes than the model's (a VOC model scored with the COCO preset's
    settings, say): the preset's settings apply all the same, unlike the model's own without it."""
    preset = get_preset(args.preset).config if args.preset else {}
    names = preset.get("class_names")
    if names is None or list(config.class_names) == list(names):
        return None
    shown = preset.get("label_names") or names  # display names (VOC's, COCO's), else the prompt names
    scales = " ".join(map(str, args.scales)) if args.msf else "none"
    return (
        f"Note: --preset {args.preset}'s classes ({len(names)}: {shown[0]}, ...) are not the model's "
        f"({len(config.class_names)}: {config.label_names[0]}, ...); its evaluation settings apply all the same "
        f"(input size {args.input_size}, multi-scale {scales}, CRF {'on' if args.crf else 'off'}). Leave out "
        "--preset for the model's own."
    )


# the flags that choose the images scored and how their labels are read (the toy world's size and seed only without a
# dataset, the seed also for the rows --train_val_split holds out): the JSON records those given
DATA_FLAGS = (
    "dataset_name", "dataset_config_name", "data_dir", "dataset_path", "validation_split", "train_split",
    "train_val_split", "max_eval_samples", "image_column", "mask_column", "labels_column", "labels_zero_based",
    "skip_unreadable_images",
)  # fmt: skip


def data_report(args: argparse.Namespace) -> dict:
    """The data flags of this evaluation (`DATA_FLAGS`, given or defaulted) as the JSON records them: two datasets,
    or two held-out draws, gave JSON alike but for the scores."""
    flags = DATA_FLAGS + (
        ("toy_val_images", "seed") if args.toy else ("seed",) if args.train_val_split else ()
    )
    values = {flag: getattr(args, flag) for flag in flags}
    # by identity: a seed of 0 equals False, but is a value
    return {flag: value for flag, value in values.items() if value is not None and value is not False}


def settings_report(args: argparse.Namespace, ignore_index: int) -> dict:
    """The evaluation settings used, as the JSON records them (scales and flip only with --msf)."""
    return {
        "input_size": args.input_size,
        "msf_scales": list(args.scales) if args.msf else None,
        "flip": args.msf,
        "crf": args.crf,
        "ignore_index": ignore_index,
        "skip_empty_images": args.skip_empty_images,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.output_json:  # its folder made now: a missing one lost the JSON after the whole evaluation
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    # under `accelerate launch` / torchrun each process scores its share of the images (confusion matrices summed)
    state = process_state(args.device)
    accelerator = Accelerator(cpu=args.device == "cpu") if state.num_processes > 1 else None
    device = process_device(args.device, state)
    main_process = accelerator is None or accelerator.is_main_process
    with naming_the_model_flag(args.model_name_or_path):
        model = AutoModelForSemanticSegmentation.from_pretrained(args.model_name_or_path)
    model = model.to(device).eval()
    cfg = model.config
    if args.semantic_loss_ignore_index is not None:  # the masks' (checked: no class id)
        cfg.semantic_loss_ignore_index = args.semantic_loss_ignore_index
    if args.toy:
        check_toy_classes(cfg.class_names, args.model_name_or_path)

    def note_missing_processor() -> None:  # by the main process (every process loads the model)
        if main_process:
            print(
                f"Note: {args.model_name_or_path} holds no image processor (preprocessor_config.json): the images "
                "are read as the default WeCLIPImageProcessor reads them (WeCLIP's ImageNet statistics, long side "
                f"{WeCLIPImageProcessor().size['longest_edge']} unless --eval_long_side says otherwise). A model "
                "trained at another size or with other statistics scores lower: save its processor in the folder "
                "(processor.save_pretrained), as train.py does."
            )

    image_processor = WeCLIPImageProcessor.from_saved_or_default(
        args.model_name_or_path, **processor_settings(cfg), on_missing=note_missing_processor
    )
    normalization = PixelNormalization.from_image_processor(image_processor)
    args.input_size = input_size(args, image_processor)
    args.scales = scales_in_effect(args.scales, cfg)
    if main_process and (note := other_classes_note(args, cfg)):
        print(note)
    _, val, _ = load_dataset_splits(
        DataSource.from_args(args, toy_sizes=(1, args.toy_val_images)),
        train_split=args.train_split,
        validation_split=args.validation_split,
        preset=args.preset,
        need_train=False,
        train_val_split=args.train_val_split,
        dataset_classes=False,  # the model's classes
    )
    if val is None:
        raise ValueError(f"Split {args.validation_split!r} not found in the dataset.")
    dataset, summary = evaluation_set(
        val,
        cfg.num_foreground_classes,
        cfg.semantic_loss_ignore_index,
        normalization,
        # the model's classes, which a label column of names maps through
        LabelReading.from_args(args, class_names=list(zip(cfg.label_names, cfg.class_names))),
        max_samples=args.max_eval_samples,
        labelling=accelerator.main_process_first if accelerator is not None else nullcontext,
    )
    if main_process:
        print(f"{args.validation_split}: {summary}")
    share = (
        dataset
        if accelerator is None
        else process_subset(dataset, accelerator.process_index, accelerator.num_processes)
    )
    loader = DataLoader(share, batch_size=args.batch_size, collate_fn=collate_by_size)  # images of any size
    modes = ["pred"] + (["pred_msf"] if args.msf else [])
    modes += [f"{m}_crf" for m in modes] if args.crf else []
    modes += ["cam", "pseudo"] if args.pseudo_labels else []
    results = evaluate_segmentation(
        model,
        loader,
        modes,
        scales=args.scales,
        input_size=args.input_size,
        crf_params=args.crf_params,
        normalization=normalization,
        accelerator=accelerator,
    )
    if main_process:
        print(format_table(results, cfg.id2label))
    report = {
        "model": args.model_name_or_path,
        "split": args.validation_split,
        "num_images": len(dataset),
        "data": data_report(args),
        "preset": args.preset,
        "evaluation": settings_report(args, cfg.semantic_loss_ignore_index),
        **({"crf": {"preset": args.crf_preset, **dataclasses.asdict(args.crf_params)}} if args.crf else {}),
        **{MIOU_NAMES[m]: r["mean_iou"] for m, r in results.items()},  # train.py's metrics.json names
        "per_class_iou": {m: per_class_iou(r["per_category_iou"], cfg.id2label) for m, r in results.items()},
    }
    if args.output_json and main_process:
        # allow_nan=False: a NaN would make invalid JSON (evaluate_segmentation gives None instead)
        Path(args.output_json).write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")
    if accelerator is not None:  # a process group left to the interpreter's exit aborted a process (gloo)
        accelerator.wait_for_everyone()
        accelerator.end_training()
    return report


if __name__ == "__main__":
    main()
