"""Cache blocking of per-image work on CPUs: how many images of a batch a stage processes at once.

On a CPU, the whole batch at once is slower than a few images at a time wherever the per-image temporaries are
large: the frozen CLIP blocks (a [heads, T, T] attention map is 7.7 MB per image at a 320 crop, the MLP's [T, 3072]
activations 4.9 MB), the GradCAM block, PAR's neighbour weights (48 planes of H x W, 19.7 MB per image) and the CE's
full-resolution class scores. A chunk whose working set stays in the last-level cache runs at its bandwidth instead
of DRAM's, and small blocks are reused from the heap where large ones are mapped afresh (`weclip_hf.host_memory`).
Each stage sizes its chunks by its largest per-image temporary against `CPU_CHUNK_BYTES` (the CLIP blocks and the
GradCAM block against `CPU_ATTENTION_CHUNK_BYTES`). The CLIP blocks run depth first (a chunk of images through all
the blocks, then the next). Measured on this project's 2-core CPU (crop 320, `python examples/benchmark_chunks.py
--num_threads 2 --batch_sizes 16 --chunks 2,4,8 --repeats 3`, 2026-12-04): the first 11 blocks took 0.958x / 0.926x
/ 0.922x a plain CLIP forward in chunks of 2 / 4 / 8 images at batch 16 (RFM off; 0.947x / 0.924x / 0.904x with the
RFM's maps), the training step 1.451x / 1.439x / 1.454x (1.471x / 1.444x / 1.435x); at batch 4 chunks of 2 and 4
were level (step 1.469x / 1.467x, 1.447x / 1.450x; `--batch_sizes 4 --chunks 2,4 --repeats 7`). An earlier
measurement, before the blocks' MLP ran its activation in one pass (`weclip_hf.clip_layers`), had chunks of 2 ahead
(0.87x against 0.90x for chunks of 4, batch 16). Chunked results equal the whole batch's up to float32 summation
order (~1e-6, the CLIP features exactly here); the CAM normalisations can amplify that on nearly flat maps and flip
pseudo labels at near-ties (a few pixels in 10^4, `tests/test_chunking.py`). An accelerator gets the whole batch in
one pass.
"""

from __future__ import annotations

import torch

# per-chunk budget of a stage's largest temporary (PAR's neighbour weights, the CE's class scores: one image at 320)
CPU_CHUNK_BYTES = 16 * 2**20
# the CLIP blocks' and the GradCAM block's: 4 images of [12, 401, 401] float32 attention maps (ViT-B/16, crop 320)
CPU_ATTENTION_CHUNK_BYTES = 32 * 2**20


def images_per_chunk(
    num_images: int, bytes_per_image: int, device: torch.device | str, budget: int = CPU_CHUNK_BYTES
) -> int:
    """Images per chunk: all ``num_images`` off the CPU and while a graph is traced (`torch.compile`,
    `torch.export`, `torch.jit.trace`: a chunk count computed from the batch size would fix the batch size of the
    graph); on the CPU as many as keep ``bytes_per_image`` times the chunk within ``budget`` bytes (at least one)."""
    if is_capturing_graph():
        return num_images
    if torch.device(device).type != "cpu":
        return max(num_images, 1)
    return max(1, min(num_images, budget // max(bytes_per_image, 1)))


def is_capturing_graph() -> bool:
    """Whether a graph is being captured: torch.compile / torch.export (strict or not) or torch.jit.trace."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def images_per_attention_chunk(
    num_images: int, num_tokens: int, num_heads: int, device: torch.device | str
) -> int:
    """Images per chunk for CLIP blocks over ``num_tokens`` tokens (the first L-1 blocks, the GradCAM block): their
    float32 attention probabilities, [heads, T, T] per image, within `CPU_ATTENTION_CHUNK_BYTES`."""
    return images_per_chunk(num_images, num_heads * num_tokens**2 * 4, device, CPU_ATTENTION_CHUNK_BYTES)


def batch_chunks(x: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """``x`` split along the batch into chunks of ``chunk``: ``[x]`` itself when one chunk holds the batch (no
    split, and while a graph is traced no guard on the batch size: `torch.export` with a dynamic batch)."""
    return [x] if chunk >= x.shape[0] else list(x.split(chunk))


def concat_chunks(chunks: list[torch.Tensor]) -> torch.Tensor | None:
    """The chunks' results concatenated along the batch (no copy for a single chunk); None for no chunks."""
    if not chunks:
        return None
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


__all__ = [
    "CPU_ATTENTION_CHUNK_BYTES",
    "CPU_CHUNK_BYTES",
    "batch_chunks",
    "is_capturing_graph",
    "concat_chunks",
    "images_per_attention_chunk",
    "images_per_chunk",
]
