"""The "image-segmentation" pipeline with WeCLIP's input conversions, registered on ``import weclip_hf``.

transformers' `ImageSegmentationPipeline` has three problems with a WeCLIP model:

- its ``preprocess`` runs every input through `transformers.image_utils.load_image`, which accepts only paths,
  URLs and PIL images and calls ``.convert("RGB")``: 16-bit ("I;16", "I") images become 0/255 and float ("F")
  images black before `WeCLIPImageProcessor` sees them;
- its ``__init__`` checks the model class against transformers' static name tables only, so a model registered
  with ``AutoModelForSemanticSegmentation.register`` is logged as an ERROR ("... is not supported for
  image-segmentation") on every ``pipeline(...)`` call;
- with ``batch_size > 1`` its collate function concatenates ``pixel_values``, which fails ("Sizes of tensors must
  match") for images of different aspect ratios: `WeCLIPImageProcessor` keeps each image's aspect ratio.

`WeCLIPImageSegmentationPipeline` subclasses it: with a `WeCLIPImageProcessor` it hands the images over as given
(PIL in their own mode, NumPy arrays, torch tensors; paths, URLs and base64 strings are opened without
conversion), so the pipeline reads pixels exactly as the processor does; models registered with the task's Auto
classes count as supported. A batch of images of one size still runs as one forward; a batch of mixed sizes runs
the model once per distinct size on the unpadded images (padding would change CLIP's global attention), so every
image gets exactly the masks it gets alone (`collate_mixed_sizes`, ``_forward``, ``postprocess``). With any other
processor or model it behaves exactly like its parent.
`register_segmentation_pipeline` makes it the task's pipeline class, so a plain
``pipeline("image-segmentation", model=folder)`` uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
import transformers
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForImageSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

from .image_processing_weclip import WeCLIPImageProcessor
from .image_reading import image_size, open_image
from .model_loading import WECLIP_MODEL_TYPES

TASK = "image-segmentation"
# the Auto classes whose models ImageSegmentationPipeline serves (its name tables are theirs)
TASK_AUTO_CLASSES = (
    AutoModelForImageSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForUniversalSegmentation,
)
PIXEL_SIZES = "pixel_sizes"  # a collated batch of mixed sizes: [B, 2] each image's unpadded (h, w) in pixels
LOGITS_SIZES = "logits_sizes"  # its model outputs: [B, 2] each image's (h, w) on the logit grid


def pad_and_stack(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors [..., h_i, w_i] of one leading shape -> (the stack [B, ..., H, W], zero-padded at the bottom/right
    to the largest h and w; the sizes [B, 2] = (h_i, w_i))."""
    sizes = torch.tensor([tuple(t.shape[-2:]) for t in tensors])
    height, width = sizes.amax(dim=0).tolist()
    padded = [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2])) for t in tensors]
    return torch.stack(padded), sizes


def collate_mixed_sizes(items: list[dict], collate: Callable[[list[dict]], dict]) -> dict:
    """Preprocessed images (``pixel_values`` [1, 3, h_i, w_i] each) -> one batch.

    Images of one size go to ``collate`` (the pipeline's own collate function) unchanged. Images of different
    sizes are zero-padded to a common size ([B, 3, H, W]) and their true sizes kept under `PIXEL_SIZES`, for
    ``_forward`` to undo the padding.
    """
    if len({item["pixel_values"].shape for item in items}) == 1:
        return collate(items)
    pixel_values, sizes = pad_and_stack([item["pixel_values"][0] for item in items])
    batch = collate([{k: v for k, v in item.items() if k != "pixel_values"} for item in items])
    return {**batch, "pixel_values": pixel_values, PIXEL_SIZES: sizes}


def concatenate_items(items: list[dict]) -> dict:
    """Preprocessed images of one size -> one batch as transformers' pipelines collate an image processor's outputs
    (tensors concatenated along the batch, other values listed), as a module-level function: DataLoader workers
    started with 'spawn' (macOS, Windows) pickle the collate function, and transformers' is a closure."""
    return {
        key: torch.cat([item[key] for item in items]) if isinstance(items[0][key], torch.Tensor) else
        [item[key] for item in items]
        for key in items[0]
    }  # fmt: skip


def size_groups(sizes: list[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Sizes (h, w) of a batch's images -> the batch indices of each distinct size (in order of appearance)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    return groups


class WeCLIPImageSegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline` that gives `WeCLIPImageProcessor` the images unconverted (see the module)."""

    # The task never uses a video processor. Looking for one in a saved WeCLIP folder would read the image
    # processor's remote-code auto_map as a "WeCLIPVideoProcessor" that only remote code could provide, and ask
    # on stdin whether to trust it.
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        vision = getattr(self.model.config, "vision_config", None)
        patch = getattr(vision, "patch_size", None)
        if isinstance(self.image_processor, WeCLIPImageProcessor) and patch not in (
            None,
            self.image_processor.patch_size,
        ):
            raise ValueError(
                f"The image processor pads to {self.image_processor.patch_size}-px patches but the model's CLIP uses "
                f"{patch}-px patches: the padding would not be cropped from the masks. Use the processor saved with "
                f"the model, or WeCLIPImageProcessor(patch_size={patch})."
            )

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

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        """The parent's iterator; with ``batch_size > 1`` and a `WeCLIPImageProcessor` its batches may mix image
        sizes (`collate_mixed_sizes`)."""
        iterator = super().get_iterator(
            inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
        )
        if batch_size > 1 and isinstance(self.image_processor, WeCLIPImageProcessor):
            # postprocess iterator -> forward iterator -> DataLoader (transformers' layout, checked)
            loader = getattr(getattr(iterator, "loader", None), "loader", None)
            if not isinstance(loader, DataLoader):
                raise RuntimeError(
                    f"transformers {transformers.__version__}'s pipeline iterator is not laid out as "
                    "WeCLIPImageSegmentationPipeline expects (postprocess -> forward -> DataLoader): batches of "
                    "images of different sizes cannot be collated. Use batch_size=1 or report this."
                )
            loader.collate_fn = partial(collate_mixed_sizes, collate=concatenate_items)
        return iterator

    def _forward(self, model_inputs):
        """The parent's forward, with a WeCLIP model's outputs as a `ModelOutput` also when it was loaded with
        ``return_dict=False`` (the parent's postprocess reads them by name; other models get no ``return_dict``,
        which their forward may not take); a batch of mixed sizes (`PIXEL_SIZES`) runs the model once
        per distinct size on the unpadded images, and its logits come back zero-padded to a common grid with each
        image's own grid size under `LOGITS_SIZES` (the outputs keep only ``logits``)."""
        if getattr(self.model.config, "model_type", None) in WECLIP_MODEL_TYPES:
            model_inputs["return_dict"] = True
        sizes = model_inputs.pop(PIXEL_SIZES, None)
        if sizes is None:
            return super()._forward(model_inputs)
        pixel_values, target_size = model_inputs.pop("pixel_values"), model_inputs.pop("target_size")
        logits = {}
        for (height, width), index in size_groups([tuple(s) for s in sizes.tolist()]).items():
            outputs = self.model(pixel_values=pixel_values[index, :, :height, :width], **model_inputs)
            logits.update(zip(index, outputs.logits))
        padded, logits_sizes = pad_and_stack([logits[i] for i in range(len(sizes))])
        model_outputs = type(outputs)(logits=padded)
        model_outputs["target_size"] = target_size
        model_outputs[LOGITS_SIZES] = logits_sizes
        return model_outputs

    def postprocess(self, model_outputs, **kwargs):
        """The parent's postprocess, after cropping an image of a mixed-size batch to its own logit grid."""
        sizes = model_outputs.get(LOGITS_SIZES)
        if sizes is not None:
            height, width = sizes[0].tolist()
            model_outputs["logits"] = model_outputs["logits"][..., :height, :width]
        return super().postprocess(model_outputs, **kwargs)


def register_segmentation_pipeline() -> None:
    """Make `WeCLIPImageSegmentationPipeline` the "image-segmentation" task's class (model classes and default kept).

    The task entry's ``impl`` is replaced rather than going through ``PIPELINE_REGISTRY.register_pipeline``:
    that one would mark the class as custom code, and ``pipe.save_pretrained`` would then write a
    ``custom_pipelines`` entry that needs ``trust_remote_code`` to load.
    """
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    PIPELINE_REGISTRY.supported_tasks[TASK] = {**entry, "impl": WeCLIPImageSegmentationPipeline}


__all__ = [
    "WeCLIPImageSegmentationPipeline",
    "collate_mixed_sizes",
    "open_image",
    "register_segmentation_pipeline",
]
