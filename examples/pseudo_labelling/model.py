"""The model of examples/generate_pseudo_labels.py: a trained WeCLIP (its RFM) or a bare CLIP, and the pseudo
masks and CAMs of a group of same-size images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import PartialState
from transformers import AutoModelForSemanticSegmentation

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.data.sources import DataSource, dataset_classes_note, load_dataset_splits
from weclip_hf.data.toy import check_toy_classes, default_clip_model
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.inference import image_pseudo_labels
from weclip_hf.presets import preset_config_kwargs, with_class_names
from weclip_hf.script_arguments import naming_the_model_flag


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
