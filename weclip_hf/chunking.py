"""Cache blocking of per-image work on CPUs: how many images of a batch the pseudo-label path processes at once.

On a CPU, the whole batch at once is slower than a few images at a time wherever the per-image temporaries are
large: the attention probabilities of the map-collecting blocks and of the GradCAM block ([heads, T, T] per image,
7.7 MB at a 320 crop), and PAR's score maps, which 20 x 48 passes read and write. Blocks above 32 MiB are
mapped fresh from the OS by glibc's allocator at every allocation (page faults, zeroing), and a chunk whose
working set stays in the last-level cache runs at its bandwidth instead of DRAM's. The budgets count the
largest temporary only (the attention probabilities; PAR: the score maps, their padded copy and a weight
plane), not everything alive at once. Measured on this project's 2-core CPU (batch 16, crop 320, 2 threads):
PAR 2.21 s -> 1.27 s in chunks of 4 images (1.36 s of 2, 1.72 s of 1; PAR's 16 MiB budget gives 4-8 images
for 2-4 score maps), a map-collecting block 1.30 s -> 1.15 s (SDPA: 1.11 s), GradCAM 2.42 s -> 1.95 s. Chunked
features and GradCAMs equal the whole batch's up to float32 summation order (~1e-6); the CAM normalisations
can amplify that on nearly flat maps and flip pseudo labels at near-ties (a few pixels in 10^4,
`tests/test_chunking.py`). An accelerator gets the whole batch in one pass.
"""

from __future__ import annotations

import torch

# glibc's largest heap-served block (its mmap threshold's ceiling) on 64-bit Linux
CPU_CHUNK_BYTES = 32 * 2**20


def images_per_chunk(
    num_images: int, bytes_per_image: int, device: torch.device | str, budget: int = CPU_CHUNK_BYTES
) -> int:
    """Images per chunk: all ``num_images`` off the CPU; on the CPU as many as keep ``bytes_per_image`` times the
    chunk within ``budget`` bytes (at least one)."""
    if torch.device(device).type != "cpu":
        return max(num_images, 1)
    return max(1, min(num_images, budget // max(bytes_per_image, 1)))


def concat_chunks(chunks: list[torch.Tensor]) -> torch.Tensor | None:
    """The chunks' results concatenated along the batch (no copy for a single chunk); None for no chunks."""
    if not chunks:
        return None
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


__all__ = ["CPU_CHUNK_BYTES", "concat_chunks", "images_per_chunk"]
