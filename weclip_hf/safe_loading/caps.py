"""The caps on what a checkpoint may declare, checked before anything is read, and the wording its refusals
share: `REDOWNLOAD`, sizes in bytes (`_size`)."""

from __future__ import annotations

# Caps on what an archive may declare, checked on its zip directory before any member is read. Real
# checkpoints: the official WeCLIP ViT-B/16 checkpoint is ~600 MB, OpenAI's ViT-L/14 TorchScript archive ~900 MB,
# and their largest member (a token embedding, 49408 x 768) under 200 MB even in float32.
MAX_ARCHIVE_BYTES = 4 * 2**30  # the uncompressed sizes of all members together
MAX_MEMBER_BYTES = 2 * 2**30  # the uncompressed size of one member (one tensor storage)
# data.pkl and code/*.py are read whole and parsed into Python objects (up to ~40 bytes of objects per pickle
# byte); real ones are under 1 MB.
MAX_METADATA_BYTES = 8 * 2**20
# torch writes members uncompressed (ratio 1), so a member above this ratio is a zip bomb, not a checkpoint;
# members under _RATIO_FLOOR bytes are not ratio-checked (a small zero tensor compresses well).
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 2**20
_MAX_NDIM = 64
# How deep a torch.save pickle's dicts, lists and tuples may nest: a training checkpoint's optimizer state nests 4
# deep (optimizer.state.0.exp_avg); a pickle of millions of levels fits in MAX_METADATA_BYTES.
MAX_CONTAINER_NESTING = 64
REDOWNLOAD = "Download or copy the checkpoint again."


def _size(n: int) -> str:
    unit = f" ({n / 2**30:.2f} GiB)" if n >= 2**30 else f" ({n / 2**20:.1f} MiB)" if n >= 2**20 else ""
    return f"{n:,} bytes{unit}"
