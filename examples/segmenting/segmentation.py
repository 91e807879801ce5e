"""The model and what it makes of the images: the model of --model_name_or_path and its image processor, the
label maps of a batch (multi-scale, CRF), an input's overlay."""

from __future__ import annotations

import torch
from accelerate import PartialState
from PIL import Image
from transformers import AutoModelForSemanticSegmentation

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.crf import crf_refine_labels
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.inference import image_logits, multiscale_flip_logits
from weclip_hf.script_arguments import naming_the_model_flag
from weclip_hf.visualization import overlay_figure, present_class_cams


def load_model(
    args, state: PartialState, device: torch.device
) -> tuple[WeCLIPForSemanticSegmentation, WeCLIPImageProcessor]:
    """The model of ``--model_name_or_path`` in evaluation mode on ``device`` (`process_device`), and its image
    processor (the warning of a folder without one given by the main process)."""
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
