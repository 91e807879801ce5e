"""Cache blocking of per-image work on CPUs: how many images of a batch the pseudo-label path processes at once.

On a CPU, the whole batch at once is slower than a few images at a time wherever the per-image temporaries are
large: the attention probabilities of the map-collecting blocks and of the GradCAM block ([heads, T, T] per image,
7.7 MB at a 320 crop), and PAR's score maps, which 20 x 48 passes read and write. Blocks above 32 MiB are
mapped fresh from the OS by glibc's allocator at every allocation (page faults, zeroing), and a chunk whose
working set stays in the last-level cache runs at its bandwidth instead of DRAM's. Measured on this project's
2-core CPU (batch 16, crop 320, 2 threads): PAR 2.21 s -> 1.27 s in chunks of 4 images, a map-collecting block
1.30 s -> 1.15 s (SDPA: 1.11 s), GradCAM 2.42 s -> 1.95 s. An accelerator gets the whole batch in one pass.
"""

from __future__ import annotations

import torch

CPU_CHUNK_BYTES = (
    32 * 2**20
)  # glibc's largest heap-served block (its mmap threshold's ceiling) on 64-bit Linux


def images_per_chunk(
    num_images: int, bytes_per_image: int, device: torch.device | str, budget: int = CPU_CHUNK_BYTES
) -> int:
    """Images per chunk: all ``num_images`` off the CPU; on the CPU as many as keep ``bytes_per_image`` times the
    chunk within ``budget`` bytes (at least one)."""
    if torch.device(device).type != "cpu":
        return max(num_images, 1)
    return max(1, min(num_images, budget // max(bytes_per_image, 1)))


__all__ = ["CPU_CHUNK_BYTES", "images_per_chunk"]
