"""Read torch checkpoint archives without running their code or trusting the sizes they declare.

(A safetensors file, the safe format, is read by safetensors itself: `read_safetensors_file`, in
`safetensors_files`; a file that is none of these formats is named for what its first bytes say it is: empty,
a legacy pickle, a web page, a Git LFS pointer.) The torch formats are zip archives: ``torch.save`` writes
``<root>/data.pkl`` and one member ``<root>/data/<key>`` per tensor storage; a TorchScript archive
(``torch.jit.save``, e.g. OpenAI's ``ViT-B-16.pt``) adds ``<root>/code/`` and ``constants.pkl``. Nothing is
read before these checks pass (the caps: `caps`):

1. The zip directory (`zip_archive`: `check_zip_directory`): each member's declared uncompressed size is at
   most ``max_member_bytes``, their sum at most ``max_total_bytes``, compressed sizes fit in the file, members
   are stored or deflated and inflate at most `MAX_COMPRESSION_RATIO` : 1 (torch stores them uncompressed; a
   zip bomb inflates ~1000 : 1), and ``data.pkl`` / ``code/*.py``, read whole, are at most
   `MAX_METADATA_BYTES`.
2. ``data.pkl`` is unpickled by a restricted unpickler that reads no storage and rebuilds no tensor
   (`pickle_specs`): a tensor is a `TensorSpec` (storage record, dtype, offset, shape, stride). Each storage
   must fit in its member, each view in its storage (`check_view`: shapes, strides and offset non-negative;
   the extent reached from offset, shape and stride inside the storage; no more elements than the storage
   holds, so no stride-0 or overlapping view can declare 3e9 elements over 4 bytes), and all views together at
   most ``max_total_bytes``. Its dicts, lists and tuples nest at most `MAX_CONTAINER_NESTING` deep (a pickle of
   a few MB can nest millions of levels, whose key paths would take hours to name).
3. Only then are storages read: by this package for TorchScript (`torchscript_archives`: no code compiled or
   run, each member checked against its CRC-32 as it is read), by ``torch.load(weights_only=True)`` for
   ``torch.save`` archives (`torch_save_archives`) once every member matches its CRC-32 (`check_crcs`;
   torch.load does not check them). An archive saved without CRC-32s (all 0:
   ``torch.serialization.set_crc32_options(False)``) has none to check (`skip_absent_crcs`).

What an official checkpoint file then holds (the model's weights among a training checkpoint's entries, no
NaN) is `weclip_hf.conversion.checkpoint_file`'s concern.

Every refusal is one ``ValueError`` that names the file and the archive member or tensor key. The callers
import the names below from here.
"""

from .caps import MAX_ARCHIVE_BYTES, MAX_MEMBER_BYTES, REDOWNLOAD
from .pickle_specs import check_tensor_views
from .safetensors_files import is_safetensors_file, read_safetensors_file
from .torch_save_archives import load_torch_archive
from .torchscript_archives import is_torchscript_archive, read_torchscript_archive

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBER_BYTES",
    "REDOWNLOAD",
    "check_tensor_views",
    "is_safetensors_file",
    "is_torchscript_archive",
    "load_torch_archive",
    "read_safetensors_file",
    "read_torchscript_archive",
]
