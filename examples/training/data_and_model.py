"""Phase 1 of examples/train.py: the model (fresh from its backbones, or a saved one continued), the tokenizer of
its text embeddings, its image processor, and the training and validation sets, normalized as that processor says.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from accelerate import Accelerator
from huggingface_hub import try_to_load_from_cache
from torch.utils.data import Dataset
from transformers import AutoModelForSemanticSegmentation, PreTrainedTokenizerBase
from transformers.utils import cached_file

from training.arguments import clip_source, config_preset, recipe_source
from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.data.columns import is_streaming
from weclip_hf.data.labelled_sets import LabelReading, evaluation_set, training_set
from weclip_hf.data.sources import DataSource, dataset_classes_note, load_dataset_splits, names_no_dataset
from weclip_hf.data.transforms import TrainAugmentation
from weclip_hf.hub import TOKENIZER_FILES
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.model_loading import load_clip_tokenizer
from weclip_hf.modeling_weclip_plus import model_from_backbones
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import preset_config_kwargs, processor_size, with_class_names
from weclip_hf.script_arguments import model_type_of_args, naming_the_model_flag, saved_config
from weclip_hf.training import schedule_notes
from weclip_hf.trajectory import CONFIG_FLAGS, WEIGHT_FLAGS


def prepare_data(
    args, train, val, num_classes: int, ignore_index: int, accelerator, normalization, class_names=None
):
    """The training set of the flags (`training_set`; the first --max_train_samples examples) and the evaluation
    set of the validation split (None without one)."""
    if args.max_train_samples and is_streaming(train):
        train = train.take(args.max_train_samples)
    elif args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    augment = TrainAugmentation(
        args.crop_size,
        (args.scale_min, args.scale_max),
        ignore_index=ignore_index,
        normalization=normalization,
    )
    # the validation split's label column read as the training split's
    reading = LabelReading.from_args(args, class_names)
    train_set, summary = training_set(
        train,
        num_classes,
        augment,
        reading,
        require_mask=args.fully_supervised,
        seed=args.seed,
        shuffle_buffer_size=args.shuffle_buffer_size,
        labelling=accelerator.main_process_first,
    )
    accelerator.print(f"train: {summary}")
    val_set = None
    if val is not None:
        # a streamed split is read once: evaluation indexes it
        val_set, val_summary = evaluation_set(
            val,
            num_classes,
            ignore_index,
            normalization,
            reading,
            max_samples=args.max_eval_samples,
            labelling=accelerator.main_process_first,
        )
        accelerator.print(f"validation: {val_summary}")
    return train_set, val_set


def build_model(
    args, names: dict, tokenizer: PreTrainedTokenizerBase | None = None
) -> WeCLIPForSemanticSegmentation:
    """A fresh WeCLIP from ``--clip_model_name_or_path`` (WeCLIP+ with ``--dino_model_name_or_path`` or a WeCLIP+
    preset; preset, recipe and model flags applied; its text embeddings computed with ``tokenizer``, by default the
    CLIP's), or the saved model of ``--model_name_or_path`` with the model flags given on the command line applied to
    its config."""
    if args.model_name_or_path:
        # checked before loading (read once: parse_args may have read it)
        saved = saved_config(args)
        # a flag of the weights or text embeddings restating the trained model's value changes nothing
        fixed = [k for k in args.given_model_flags if k in WEIGHT_FLAGS and getattr(args, k) != saved.get(k)]
        if fixed:
            raise ValueError(
                f"--{fixed[0]} {getattr(args, fixed[0])!r} cannot be applied to the trained model of "
                f"--model_name_or_path (its {fixed[0]}: {saved.get(fixed[0])!r}): it would change its weights or text "
                "embeddings. Start from --clip_model_name_or_path instead."
            )
        overrides = {k: getattr(args, k) for k in args.given_model_flags if k not in WEIGHT_FLAGS}
        with naming_the_model_flag(args.model_name_or_path):
            return AutoModelForSemanticSegmentation.from_pretrained(args.model_name_or_path, **overrides)
    overrides = preset_config_kwargs(config_preset(args))
    overrides.update({k: v for k, v in names.items() if v is not None})
    for key in CONFIG_FLAGS:
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    plus = model_type_of_args(args) == "weclip_plus"
    return model_from_backbones(
        clip_source(args),
        args.dino_model_name_or_path,
        plus,
        tokenizer=tokenizer,
        **with_class_names(overrides, args.class_names),
    )


def embeddings_tokenizer(
    args: argparse.Namespace, log: Callable[[str], None]
) -> PreTrainedTokenizerBase | None:
    """The tokenizer of the model's text embeddings, which the run saves with the model (new class names need it):
    a fresh model's CLIP's; a trained model's (``--model_name_or_path``) own, else that of the Hub CLIP its config
    records, from the local Hub cache only (the run fetches nothing it did not); else None, which ``log`` says. Each
    by `load_clip_tokenizer` (a folder without tokenizer files refused). Loaded once, before the data and the model:
    a CLIP without one fails the run before it trains."""
    if not args.model_name_or_path:
        return load_clip_tokenizer(clip_source(args), "--clip_model_name_or_path")
    source = args.model_name_or_path
    # a Hub id's from the repository the model comes from (None offline, where the cache lacks it)
    marker = TOKENIZER_FILES[1]
    missing = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    if cached_file(source, marker, **missing):
        return load_clip_tokenizer(source, "--model_name_or_path")
    # the CLIP's Hub id, which `from_clip` records in the vision config ("": a local CLIP)
    clip = saved_config(args).get("vision_config", {}).get("_name_or_path") or None
    # try_to_load_from_cache answers a path where the cache holds the file (else None, or a marker of its absence)
    if clip and isinstance(try_to_load_from_cache(clip, marker), str):
        return load_clip_tokenizer(clip, "the CLIP its config records", {"local_files_only": True})
    where = (
        f"the tokenizer of the CLIP its config records ({clip}) is not in the local Hub cache"
        if clip
        else "its config records no Hub CLIP"
    )
    log(
        f"Note: --model_name_or_path {source} holds no tokenizer, and {where}: the model will be saved without one "
        "(new class names need the tokenizer of the CLIP it was built from: save it in the folder, "
        "AutoTokenizer.from_pretrained(clip).save_pretrained(folder))."
    )
    return None


def unread_flags(args: argparse.Namespace, cfg: WeCLIPConfig) -> list[str]:
    """Notes on model flags given that this model never reads: --cam_box_threshold of a WeCLIP+ without the box
    mask (voc-plus's recipe)."""
    if "cam_box_threshold" in args.given_model_flags and not getattr(cfg, "rfm_use_box_mask", True):
        return [
            "--cam_box_threshold has no effect: this WeCLIP+ model masks no box (rfm_use_box_mask false, as the "
            "voc-plus recipe; coco-plus's masks one, as --rfm_use_box_mask does)."
        ]
    return []


def build_image_processor(args, config: WeCLIPConfig) -> WeCLIPImageProcessor:
    """The processor saved with the model, whose normalization the training and evaluation data use: that of
    ``--image_processor_name_or_path``, else of ``--model_name_or_path`` (if it holds one), else the default;
    its size is this run's evaluation size, its patch size and label ignore index the model's (``config``)."""
    settings = {**processor_settings(config), "size": processor_size(args.eval_long_side, args.crop_size)}
    if args.image_processor_name_or_path:  # named on the command line: it must hold one
        return WeCLIPImageProcessor.from_pretrained(args.image_processor_name_or_path, **settings)
    return WeCLIPImageProcessor.from_saved_or_default(args.model_name_or_path, **settings)


def load_data_and_model(
    args, accelerator: Accelerator, retained: bool, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[WeCLIPForSemanticSegmentation, WeCLIPImageProcessor, Dataset, Dataset | None]:
    """Phase 1: the model (`build_model`; a fresh one's text embeddings computed with ``tokenizer``), its image
    processor, and the training and validation sets (normalized with that processor's statistics); ``retained``:
    freed host memory is kept for reuse (for the summary line)."""
    train_raw, val_raw, names = load_dataset_splits(
        # the toy world when no dataset is named (--preset toy may name one)
        DataSource.from_args(args, toy_sizes=(args.toy_train_images, args.toy_val_images)),
        train_split=args.train_split,
        validation_split=args.validation_split,
        preset=args.preset,
        train_val_split=args.train_val_split,
        labels_column=args.labels_column,
        # the dataset's ClassLabel names are the classes of a new model not given --class_names
        dataset_classes=not (args.class_names or args.model_name_or_path),
        log=accelerator.print,
    )
    model = build_model(args, names, tokenizer)
    # the recipe's evaluation settings are the model's (evaluate.py, segment.py), and a continuing run's recipe
    model.config.training_preset = args.recipe
    from_dataset = not (args.preset or args.class_names or args.model_name_or_path or names_no_dataset(args))
    if "class_names" in names and from_dataset:
        accelerator.print(dataset_classes_note(names["class_names"]))
    cfg = model.config
    image_processor = build_image_processor(args, cfg)
    accelerator.print(
        f"recipe {args.recipe} ({recipe_source(args)}), {cfg.num_foreground_classes} classes, "
        f"{args.max_train_steps} steps of {args.per_device_train_batch_size} x "
        f"{accelerator.num_processes} images, lr {args.learning_rate}, "
        + (
            "fully supervised (no pseudo labels)"
            if args.fully_supervised
            else f"RFM after {cfg.rfm_start_step} steps ({args.rfm_start_source})"
        )
        + f", on {accelerator.device}"
        + (f" with {torch.get_num_threads()} threads" if accelerator.device.type == "cpu" else "")
        + (", freed host memory kept for reuse" if retained else "")
    )
    for note in [
        # a fully supervised run trains on the masks: when the RFM or self-training would start does not matter
        *(
            []
            if args.fully_supervised
            else schedule_notes(
                cfg,
                int(model.training_step),
                args.max_train_steps,
                rfm_source=args.rfm_start_source,
                rfm_aside=" metrics.json's pseudo_label_miou applies the RFM to the trained model all the same."
                if val_raw is not None
                else "",
            )
        ),
        *unread_flags(args, cfg),
    ]:
        accelerator.print(f"Note: {note}")
    if val_raw is None:
        why = (
            "--validation_split none"
            if args.validation_split == "none"
            else "the dataset has no validation split"
        )
        accelerator.print(f"Note: {why}: no evaluation (metrics.json has no mIoU).")
    train_set, val_set = prepare_data(
        args,
        train_raw,
        val_raw,
        cfg.num_foreground_classes,
        cfg.semantic_loss_ignore_index,
        accelerator,
        PixelNormalization.from_image_processor(image_processor),
        class_names=list(zip(cfg.label_names, cfg.class_names)),
    )
    return model, image_processor, train_set, val_set
