"""weclip-hf: WeCLIP weakly supervised semantic segmentation for Hugging Face transformers."""

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from .configuration_weclip import WeCLIPConfig
from .modeling_weclip import WeCLIPForSemanticSegmentation, WeCLIPPreTrainedModel, WeCLIPSemanticSegmenterOutput

AutoConfig.register("weclip", WeCLIPConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(WeCLIPConfig, WeCLIPForSemanticSegmentation, exist_ok=True)

__all__ = [
    "WeCLIPConfig",
    "WeCLIPForSemanticSegmentation",
    "WeCLIPPreTrainedModel",
    "WeCLIPSemanticSegmenterOutput",
]
