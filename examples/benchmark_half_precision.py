#!/usr/bin/env python
"""Inference with float32 vs bfloat16 / float16 WEIGHTS (not autocast): time and peak memory, side by side.

    python examples/benchmark_half_precision.py                     # ViT-B/16-sized random WeCLIP, CPU
    python examples/benchmark_half_precision.py --device cuda --batch_size 16

Each dtype runs in its own subprocess, so its peak memory is its own: the CUDA allocator's peak on a GPU, the
process's peak resident memory (ru_maxrss, includes the Python runtime) on the CPU. Weights are random (real
CLIP weights need a download); speed and memory do not depend on their values.
A dtype whose process fails has the end of its error output printed; the others still run, and the script then
exits 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from weclip_hf.script_arguments import WEIGHT_DTYPES

# lines of a failed measurement's error output shown (its traceback's end, with the error)
ERROR_LINES = 15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--dtypes",
        default=",".join(WEIGHT_DTYPES),
        help=f"comma-separated weight dtypes (default {','.join(WEIGHT_DTYPES)})",
    )
    p.add_argument("--batch_size", type=int, default=4, help="images per forward (default 4)")
    p.add_argument("--size", type=int, default=320, help="image side (320: the training crop)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up run (default 5)")
    p.add_argument("--num_threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this dtype in this process
    return p.parse_args(argv)


def measure(args: argparse.Namespace, dtype_name: str) -> dict:
    """Median forward time and peak memory of single-scale inference with weights in ``dtype_name``."""
    import resource
    import time

    import torch

    from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation

    torch.set_num_threads(args.num_threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    model = (
        WeCLIPForSemanticSegmentation(WeCLIPConfig()).to(args.device, dtype).eval()
    )  # ViT-B/16, VOC classes
    pixels = torch.randn(args.batch_size, 3, args.size, args.size, device=args.device, dtype=dtype)
    times = []
    with torch.no_grad():
        for _ in range(args.repeats + 1):  # the first run warms up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(pixels)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"dtype": dtype_name, "median_s": sorted(times[1:])[len(times[1:]) // 2], "peak_mb": peak_mb}


def measure_in_subprocess(args: argparse.Namespace, dtype_name: str) -> dict | None:
    """`measure` of ``dtype_name`` in a process of its own; None where it failed, the end of its error output
    printed."""
    command = [sys.executable, __file__, "--one", dtype_name, "--device", args.device]
    for flag in ("batch_size", "size", "repeats", "num_threads"):
        command += [f"--{flag}", str(getattr(args, flag))]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-ERROR_LINES:])
        print(f"{dtype_name}: failed (exit status {proc.returncode}):\n{tail}\n", file=sys.stderr, flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    """The table of every dtype measured; where one failed (its error printed), the others still run, and the
    script exits 1 at the end."""
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return []
    measured = [(dtype, measure_in_subprocess(args, dtype)) for dtype in args.dtypes.split(",")]
    rows = [row for _, row in measured if row is not None]
    if rows:
        base = rows[0]
        print(
            f"inference, batch {args.batch_size}, {args.size} px, {args.device}, {args.num_threads} thread(s)"
        )
        print("| weights | median time | vs first | peak memory | vs first |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['dtype']} | {row['median_s']:.3f} s | {row['median_s'] / base['median_s']:.2f}x | "
            f"{row['peak_mb']:.0f} MB | {row['peak_mb'] / base['peak_mb']:.2f}x |"
        )
    failed = [dtype for dtype, row in measured if row is None]
    if failed:
        raise SystemExit(f"benchmark_half_precision: {', '.join(failed)} failed (the errors are above)")
    return rows


if __name__ == "__main__":
    main()
