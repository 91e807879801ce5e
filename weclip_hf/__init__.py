"""weclip-hf: WeCLIP weakly supervised semantic segmentation for Hugging Face transformers.

Importing the package registers "weclip" with AutoConfig, AutoModelForSemanticSegmentation and
AutoImageProcessor, and makes `WeCLIPImageSegmentationPipeline` the "image-segmentation" pipeline class (the
same as transformers' for other models), so ``pipeline("image-segmentation", model=folder)`` works, reads
inputs as `WeCLIPImageProcessor` does and logs no "not supported" error.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

from .configuration_weclip import WeCLIPConfig
from .image_processing_weclip import WeCLIPImageProcessor
from .inference import multiscale_flip_logits, resize_longest_edge
from .modeling_weclip import (
    WeCLIPCAMOutput,
    WeCLIPForSemanticSegmentation,
    WeCLIPPreTrainedModel,
    WeCLIPSemanticSegmenterOutput,
)
from .segmentation_pipeline import WeCLIPImageSegmentationPipeline, register_segmentation_pipeline

AutoConfig.register("weclip", WeCLIPConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(WeCLIPConfig, WeCLIPForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(WeCLIPConfig, image_processor_classes={"pil": WeCLIPImageProcessor}, exist_ok=True)
register_segmentation_pipeline()

__version__ = "0.1.0"

__all__ = [
    "WeCLIPConfig",
    "WeCLIPForSemanticSegmentation",
    "WeCLIPPreTrainedModel",
    "WeCLIPSemanticSegmenterOutput",
    "WeCLIPCAMOutput",
    "WeCLIPImageProcessor",
    "WeCLIPImageSegmentationPipeline",
    "multiscale_flip_logits",
    "resize_longest_edge",
]
