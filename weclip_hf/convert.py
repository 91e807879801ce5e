"""Convert official WeCLIP and WeCLIP+ checkpoints (and OpenAI CLIP weights) to this package's format.

The code lives in `weclip_hf.conversion` (key tables, config inference, the end-to-end conversion) and
`weclip_hf.safe_loading` (reading checkpoint files without running their code); this module keeps the
names importable from ``weclip_hf.convert``.
"""

from .conversion import *  # noqa: F403 (this module's names are the package's)
from .conversion import __all__ as _CONVERSION_NAMES
from .conversion.convert_weclip import COMPUTED_KEYS
from .conversion.weclip_keys import CLIP_METADATA_KEYS, PAR_KERNEL_KEY, is_clip_key

__all__ = [*_CONVERSION_NAMES, "CLIP_METADATA_KEYS", "COMPUTED_KEYS", "PAR_KERNEL_KEY", "is_clip_key"]
