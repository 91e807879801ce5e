"""Convert official WeCLIP and WeCLIP+ checkpoints (and OpenAI CLIP weights) to this package's format.

The code lives in `weclip_hf.conversion` (key tables, config inference, the end-to-end conversion) and
`weclip_hf.safe_loading` (reading checkpoint files without running their code); this module keeps the
names importable from ``weclip_hf.convert``.
"""

from .conversion import (
    ConversionReport,
    KeyTable,
    Rename,
    check_par_kernel,
    convert_hub_dinov2_state_dict,
    convert_official_checkpoint,
    decoder_to_official,
    dino_to_official,
    hf_to_official_clip,
    infer_clip_configs,
    infer_config_from_official,
    infer_decoder_kwargs,
    infer_dino_config,
    load_official_checkpoint,
    official_to_decoder,
    official_to_dino,
    official_to_hf_clip,
    official_to_weclip,
    weclip_to_official,
)
from .conversion.convert_weclip import COMPUTED_KEYS
from .conversion.weclip_keys import CLIP_METADATA_KEYS, PAR_KERNEL_KEY, is_clip_key

__all__ = [
    "CLIP_METADATA_KEYS",
    "COMPUTED_KEYS",
    "PAR_KERNEL_KEY",
    "ConversionReport",
    "KeyTable",
    "Rename",
    "check_par_kernel",
    "convert_hub_dinov2_state_dict",
    "convert_official_checkpoint",
    "decoder_to_official",
    "dino_to_official",
    "hf_to_official_clip",
    "infer_clip_configs",
    "infer_config_from_official",
    "infer_decoder_kwargs",
    "infer_dino_config",
    "is_clip_key",
    "load_official_checkpoint",
    "official_to_decoder",
    "official_to_dino",
    "official_to_hf_clip",
    "official_to_weclip",
    "weclip_to_official",
]
