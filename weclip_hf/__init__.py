"""weclip-hf: WeCLIP weakly supervised semantic segmentation for Hugging Face transformers.

Importing the package registers "weclip" and "weclip_plus" (WeCLIP+, with a frozen DINOv2) with AutoConfig,
AutoModelForSemanticSegmentation, AutoModel (the same class: the package has no headless base model),
AutoImageProcessor and AutoProcessor (which gives the image processor, as for other vision models; unregistered,
it swallowed the processor's errors and asked about remote code), and makes `WeCLIPImageSegmentationPipeline` the
"image-segmentation" pipeline class (the same as transformers' for other models), so
``pipeline("image-segmentation", model=folder)`` works, reads inputs as `WeCLIPImageProcessor` does and logs
no "not supported" error.

The config, model and processor classes are also registered for the Auto classes' remote code:
``save_pretrained`` (and ``push_to_hub``) write an ``auto_map`` into config.json / preprocessor_config.json
and copy the code files (``modeling_weclip.py`` or ``modeling_weclip_plus.py``, their configuration files,
``image_processing_weclip.py`` and the modules they import relatively) into the folder, so
``AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)`` works where weclip-hf is
not installed. Where it is imported, the Auto classes keep using the package's own classes (no
``trust_remote_code`` needed).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoProcessor,
)

from .configuration_weclip import WeCLIPConfig
from .configuration_weclip_plus import WeCLIPPlusConfig
from .image_processing_weclip import WeCLIPImageProcessor, processor_settings
from .inference import multiscale_flip_logits, resize_longest_edge
from .modeling_weclip import (
    WeCLIPCAMOutput,
    WeCLIPForSemanticSegmentation,
    WeCLIPPreTrainedModel,
    WeCLIPSemanticSegmenterOutput,
)
from .modeling_weclip_plus import (
    WeCLIPPlusCAMOutput,
    WeCLIPPlusForSemanticSegmentation,
    WeCLIPPlusSemanticSegmenterOutput,
)
from .segmentation_pipeline import WeCLIPImageSegmentationPipeline, register_segmentation_pipeline
from .training import WeCLIPDataCollator, create_optimizer_and_scheduler

AutoConfig.register("weclip", WeCLIPConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(WeCLIPConfig, WeCLIPForSemanticSegmentation, exist_ok=True)
AutoModel.register(WeCLIPConfig, WeCLIPForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(
    WeCLIPConfig, image_processor_classes={"pil": WeCLIPImageProcessor}, exist_ok=True
)
AutoProcessor.register(WeCLIPConfig, WeCLIPImageProcessor, exist_ok=True)
AutoConfig.register("weclip_plus", WeCLIPPlusConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(WeCLIPPlusConfig, WeCLIPPlusForSemanticSegmentation, exist_ok=True)
AutoModel.register(WeCLIPPlusConfig, WeCLIPPlusForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(
    WeCLIPPlusConfig, image_processor_classes={"pil": WeCLIPImageProcessor}, exist_ok=True
)
AutoProcessor.register(WeCLIPPlusConfig, WeCLIPImageProcessor, exist_ok=True)
register_segmentation_pipeline()
WeCLIPConfig.register_for_auto_class()  # "AutoConfig"
WeCLIPPlusConfig.register_for_auto_class()
WeCLIPForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
WeCLIPPlusForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
WeCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")

__version__ = "0.1.0"


def __getattr__(name: str):
    """`WeCLIPTrainer` on first use: it imports transformers' `Trainer`, ~1 s that a model or pipeline user is spared."""
    if name == "WeCLIPTrainer":
        from .trainer import WeCLIPTrainer

        return WeCLIPTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "WeCLIPTrainer"])


__all__ = [
    "WeCLIPConfig",
    "WeCLIPForSemanticSegmentation",
    "WeCLIPPreTrainedModel",
    "WeCLIPSemanticSegmenterOutput",
    "WeCLIPCAMOutput",
    "WeCLIPPlusConfig",
    "WeCLIPPlusForSemanticSegmentation",
    "WeCLIPPlusSemanticSegmenterOutput",
    "WeCLIPPlusCAMOutput",
    "WeCLIPImageProcessor",
    "processor_settings",
    "WeCLIPImageSegmentationPipeline",
    "register_segmentation_pipeline",
    "WeCLIPDataCollator",
    "WeCLIPTrainer",
    "create_optimizer_and_scheduler",
    "multiscale_flip_logits",
    "resize_longest_edge",
]
