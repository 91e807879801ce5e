"""The "image-segmentation" pipeline with WeCLIP's input conversions, registered on ``import weclip_hf``.

transformers' `ImageSegmentationPipeline` has two problems with a WeCLIP model:

- its ``preprocess`` runs every input through `transformers.image_utils.load_image`, which accepts only paths,
  URLs and PIL images and calls ``.convert("RGB")``: 16-bit ("I;16", "I") images become 0/255 and float ("F")
  images black before `WeCLIPImageProcessor` sees them;
- its ``__init__`` checks the model class against transformers' static name tables only, so a model registered
  with ``AutoModelForSemanticSegmentation.register`` is logged as an ERROR ("... is not supported for
  image-segmentation") on every ``pipeline(...)`` call.

`WeCLIPImageSegmentationPipeline` subclasses it: with a `WeCLIPImageProcessor` it hands the images over as given
(PIL in their own mode, NumPy arrays, torch tensors; paths, URLs and base64 strings are opened without
conversion), so the pipeline reads pixels exactly as the processor does; models registered with the task's Auto
classes count as supported. With any other processor or model it behaves exactly like its parent.
`register_segmentation_pipeline` makes it the task's pipeline class, so a plain
``pipeline("image-segmentation", model=folder)`` uses it.
"""

from __future__ import annotations

import base64
import binascii
import os
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.utils import httpx  # the HTTP client transformers' load_image uses
from PIL import Image
from transformers import (
    AutoModelForImageSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

from .image_processing_weclip import WeCLIPImageProcessor, image_size

TASK = "image-segmentation"
# the Auto classes whose models ImageSegmentationPipeline serves (its name tables are theirs)
TASK_AUTO_CLASSES = (
    AutoModelForImageSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForUniversalSegmentation,
)


def open_image(image, timeout: float | None = None):
    """Path, URL or base64 string -> PIL image in its own mode; PIL images, arrays and tensors pass through."""
    if isinstance(image, Path):
        image = str(image)
    if isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
        return image
    if not isinstance(image, str):
        raise TypeError(
            f"Unsupported image type {type(image).__name__}; expected a path, URL, base64 string, PIL image, "
            "NumPy array or torch tensor."
        )
    if image.startswith(("http://", "https://")):
        return Image.open(BytesIO(httpx.get(image, timeout=timeout, follow_redirects=True).content))
    if os.path.isfile(image):
        return Image.open(image)
    data = image.split(",", 1)[1] if image.startswith("data:image/") else image
    try:
        return Image.open(BytesIO(base64.b64decode(data, validate=True)))
    except (binascii.Error, ValueError, OSError) as err:
        raise ValueError(
            f"image {image[:80]!r} is neither a URL, an existing file nor a base64-encoded image ({err})."
        ) from err


class WeCLIPImageSegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline` that gives `WeCLIPImageProcessor` the images unconverted (see the module)."""

    # The task never uses a video processor. Looking for one in a saved WeCLIP folder would read the image
    # processor's remote-code auto_map as a "WeCLIPVideoProcessor" that only remote code could provide, and ask
    # on stdin whether to trust it.
    _load_video_processor = False

    def check_model_type(self, supported_models) -> None:
        """Also count models registered with the task's Auto classes (``AutoModelFor*Segmentation.register``)."""
        registered = {
            model_class
            for auto in TASK_AUTO_CLASSES
            for model_class in auto._model_mapping._extra_content.values()
        }
        if type(self.model) not in registered:
            super().check_model_type(supported_models)

    def preprocess(self, image, subtask=None, timeout=None):
        """One image -> model inputs and its ``target_size`` (the original (H, W), as the processor reads it)."""
        if not isinstance(self.image_processor, WeCLIPImageProcessor):
            return super().preprocess(image, subtask=subtask, timeout=timeout)
        image = open_image(image, timeout=timeout)
        inputs = self.image_processor(images=[image], return_tensors="pt").to(self.dtype)
        inputs["target_size"] = [image_size(image, self.image_processor.input_data_format)]
        return inputs


def register_segmentation_pipeline() -> None:
    """Make `WeCLIPImageSegmentationPipeline` the "image-segmentation" task's class (model classes and default kept).

    The task entry's ``impl`` is replaced rather than going through ``PIPELINE_REGISTRY.register_pipeline``:
    that one would mark the class as custom code, and ``pipe.save_pretrained`` would then write a
    ``custom_pipelines`` entry that needs ``trust_remote_code`` to load.
    """
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    PIPELINE_REGISTRY.supported_tasks[TASK] = {**entry, "impl": WeCLIPImageSegmentationPipeline}


__all__ = ["WeCLIPImageSegmentationPipeline", "open_image", "register_segmentation_pipeline"]
