"""Images per chunk of the frozen CLIP blocks and the GradCAM block on a CPU (`weclip_hf.chunking`): the first L-1
CLIP blocks (with the step's attention maps) and the whole training step at each chunk size against a plain CLIP
forward of the same batch, all runs interleaved in one process.

    python examples/benchmark_chunks.py --num_threads 2 --batch_sizes 4,16 --chunks 2,4,8

The model's own choice is `weclip_hf.chunking.CPU_ATTENTION_CHUNK_BYTES` (chunks of 4 images for ViT-B/16 at a 320
crop); this script overrides it per run. Same model, batch and settings as `examples/benchmark.py` (real-size
random ViT-B/16, fp32, freed host memory kept for the next step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from benchmarking.instruments import Bench
from benchmarking.workloads import (
    build_model,
    clip_forward_fn,
    int_list,
    rfm_settings,
    trainable_optimizer,
    training_step,
)

import weclip_hf.chunking as chunking
from weclip_hf.host_memory import retain_freed_host_memory
from weclip_hf.pseudo_labels import attention_maps_needed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads for the run")
    p.add_argument("--batch_sizes", default="4,16", help="training batch sizes (default 4,16)")
    p.add_argument("--chunks", default="2,4,8", help="images per chunk to compare (default 2,4,8)")
    p.add_argument("--rfm", default="off,on", help="RFM settings: off, on or off,on")
    p.add_argument("--crop", type=int, default=320, help="training crop (default 320)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs of each (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each, interleaved (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test of the script)")
    p.add_argument("--output_json", default=None, help="also write every figure to this JSON file")
    return p.parse_args(argv)


@contextlib.contextmanager
def images_per_chunk(images: int):
    """The CLIP and GradCAM blocks in chunks of ``images`` images while the context is open."""
    original = chunking.images_per_chunk  # what `images_per_attention_chunk` sizes its chunks with
    chunking.images_per_chunk = lambda num_images, *args: max(1, min(images, num_images))
    try:
        yield
    finally:
        chunking.images_per_chunk = original


def blocks(model, pixel_values: torch.Tensor, num_maps: int) -> None:
    """The frozen CLIP's first L-1 blocks with ``num_maps`` attention maps, as in a training step."""
    with torch.no_grad():
        model.forward_clip_features(pixel_values, num_maps)


def in_chunks(images: int, fn: Callable, *args) -> Callable[[], None]:
    """``fn(*args)`` with the CLIP and GradCAM blocks in chunks of ``images`` images, as a function of nothing."""

    def run():
        with images_per_chunk(images):
            fn(*args)

    return run


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per (batch, RFM): median seconds of the blocks and of the step at each chunk size, and of the plain
    CLIP forward."""
    device = torch.device("cpu")
    bench = Bench(device)
    model = build_model(args.tiny, device, args.seed)
    optimizer = trainable_optimizer(model)
    step_args = argparse.Namespace(crop=args.crop, seed=args.seed, autocast="none")  # what the workloads read
    rows = []
    for batch in args.batch_sizes:
        for use_rfm in args.rfm:
            step, pixel_values = training_step(step_args, bench, model, optimizer, batch, use_rfm)
            num_maps = attention_maps_needed(model.config, use_rfm)
            fns = {f"blocks_{n}": in_chunks(n, blocks, model, pixel_values, num_maps) for n in args.chunks}
            fns.update({f"chunk_{n}": in_chunks(n, step) for n in args.chunks})
            fns["clip_forward"] = clip_forward_fn(step_args, model, pixel_values)
            seconds = bench.paired_medians(fns, args.warmup, args.repeats)
            rows.append(dict(batch=batch, rfm=use_rfm, seconds=seconds))
            print(
                f"  batch {batch} rfm {use_rfm}: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items()),
                flush=True,
            )
    return rows


def table(rows: list[dict], chunks: list[int]) -> str:
    head = (
        "| batch, RFM, what | "
        + " | ".join(f"{n} images per chunk" for n in chunks)
        + " | plain CLIP forward |"
    )
    lines = [head, "|---" * (len(chunks) + 2) + "|"]
    for r in rows:
        s, forward = r["seconds"], r["seconds"]["clip_forward"]
        rfm = "on" if r["rfm"] else "off"
        for what, key in (("first L-1 blocks", "blocks"), ("training step", "chunk")):
            cells = [f"{s[f'{key}_{n}'] / forward:.3f}x ({s[f'{key}_{n}'] * 1e3:.0f} ms)" for n in chunks]
            lines.append(
                f"| {r['batch']}, {rfm}, {what} | " + " | ".join(cells) + f" | {forward * 1e3:.0f} ms |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    args.batch_sizes, args.chunks, args.rfm = (
        int_list(args.batch_sizes),
        int_list(args.chunks),
        rfm_settings(args.rfm),
    )
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    retain_freed_host_memory()  # as examples/benchmark.py and examples/train.py on a CPU
    rows = measure(args)
    print("\nTime / plain CLIP forward by images per chunk of the CLIP and GradCAM blocks (CPU):")
    print(table(rows, args.chunks))
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps(dict(threads=torch.get_num_threads(), rows=rows), indent=1)
        )
    return rows


if __name__ == "__main__":
    main()
