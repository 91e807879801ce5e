"""Conversion of official checkpoints to this package's format, one concept per module:

- `key_renaming`: `Rename` rules and `KeyTable`, which renames a state dict between an official layout and
  ours in both directions (split packed q/k/v, transposes) and lists the keys a complete checkpoint holds;
- `weclip_keys`: the tables of official WeCLIP checkpoints (OpenAI CLIP, the decoder, ``par.kernel``);
- `weclip_plus_keys`: what official WeCLIP+ checkpoints add (the DINOv2 in torch.hub naming, the DINO head);
- `config_inference`: a `WeCLIPConfig` / `WeCLIPPlusConfig` from an official state dict's shapes and a preset;
- `convert_weclip`: the whole state dict both ways (WeCLIP and WeCLIP+), checked against a config, and
  `convert_official_checkpoint`, the end-to-end conversion;
- `report`: the `ConversionReport` of what became of every key;
- `checkpoint_file`: an official checkpoint file -> its model's state dict (`load_official_checkpoint`), the file
  read by `weclip_hf.safe_loading` (no code of it runs, declared sizes are checked before anything is read).
"""

from ..configuration_weclip_plus import dino_variant_name
from .checkpoint_file import load_official_checkpoint
from .config_inference import (
    OFFICIAL_PRESETS,
    infer_clip_configs,
    infer_config_from_official,
    infer_decoder_kwargs,
    infer_dino_config,
    is_official_clip,
    official_preset,
)
from .convert_weclip import (
    check_clip_source,
    convert_official_checkpoint,
    official_to_weclip,
    weclip_to_official,
)
from .key_renaming import KeyTable, Rename
from .report import ConversionReport
from .weclip_keys import (
    CLIP_KEYS,
    DECODER_KEYS,
    check_par_kernel,
    decoder_to_official,
    hf_to_official_clip,
    official_to_decoder,
    official_to_hf_clip,
)
from .weclip_plus_keys import (
    DINO_HEAD_KEYS,
    DINOV2_HUB_KEYS,
    convert_hub_dinov2_state_dict,
    dino_to_official,
    official_to_dino,
)

__all__ = [
    "CLIP_KEYS",
    "DECODER_KEYS",
    "DINOV2_HUB_KEYS",
    "DINO_HEAD_KEYS",
    "OFFICIAL_PRESETS",
    "ConversionReport",
    "KeyTable",
    "Rename",
    "check_clip_source",
    "check_par_kernel",
    "convert_hub_dinov2_state_dict",
    "convert_official_checkpoint",
    "decoder_to_official",
    "dino_to_official",
    "dino_variant_name",
    "hf_to_official_clip",
    "infer_clip_configs",
    "infer_config_from_official",
    "infer_decoder_kwargs",
    "infer_dino_config",
    "is_official_clip",
    "official_preset",
    "load_official_checkpoint",
    "official_to_decoder",
    "official_to_dino",
    "official_to_hf_clip",
    "official_to_weclip",
    "weclip_to_official",
]
