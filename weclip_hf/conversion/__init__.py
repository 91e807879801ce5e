"""Conversion of official checkpoints to this package's format, one concept per module:

- `key_renaming`: `Rename` rules and `KeyTable`, which renames a state dict between an official layout and
  ours in both directions (split packed q/k/v, transposes) and lists the keys a complete checkpoint holds;
- `weclip_keys`: the tables of official WeCLIP checkpoints (OpenAI CLIP, the decoder, ``par.kernel``);
- `config_inference`: a `WeCLIPConfig` from an official state dict's shapes and a dataset preset;
- `convert_weclip`: the whole state dict both ways, checked against a config, and
  `convert_official_checkpoint`, the end-to-end conversion;
- `report`: the `ConversionReport` of what became of every key.

Checkpoint files are read by `weclip_hf.safe_loading.load_official_checkpoint` (no code of the file runs,
declared sizes are checked before anything is read).
"""

from ..safe_loading import load_official_checkpoint
from .config_inference import infer_clip_configs, infer_config_from_official, infer_decoder_kwargs
from .convert_weclip import convert_official_checkpoint, official_to_weclip, weclip_to_official
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

__all__ = [
    "CLIP_KEYS",
    "DECODER_KEYS",
    "ConversionReport",
    "KeyTable",
    "Rename",
    "check_par_kernel",
    "convert_official_checkpoint",
    "decoder_to_official",
    "hf_to_official_clip",
    "infer_clip_configs",
    "infer_config_from_official",
    "infer_decoder_kwargs",
    "load_official_checkpoint",
    "official_to_decoder",
    "official_to_hf_clip",
    "official_to_weclip",
    "weclip_to_official",
]
