"""How long `weclip_hf.safe_loading` takes on hostile input, and what it allocates: the TorchScript class reader on
a code file ending in a line of n and 2n spaces (linear: the time doubles; the old pattern ``[ \\t]+.*\\n`` took
quadratic time), and the refusal of a torch.save file whose stride-0 view declares 3e9 elements (12 GB once
copied) in a few KB.

    python examples/benchmark_safe_loading.py                   # 4 and 8 MiB of spaces
    python examples/benchmark_safe_loading.py --spaces_mib 1    # seconds, for the tests

tests/test_convert_hostile.py checks what is refused and that nothing large is read or allocated before a
refusal; the times and the peak memory are measured here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from benchmarking.instruments import Bench

from weclip_hf.conversion import load_official_checkpoint
from weclip_hf.safe_loading import torchscript_archives

CLASS_CODE = 'class Tree(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n  w : Tensor\n'


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--spaces_mib", type=int, default=4, help="n: the line of spaces in MiB (default 4; then 2n)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs, the median reported (default 3)")
    p.add_argument("--output_json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def class_reader_seconds(bench: Bench, spaces: int, repeats: int) -> float:
    """The class declarations of a code file ending in ``spaces`` spaces, as `safe_loading` reads them."""
    text = CLASS_CODE + " " * spaces

    def read():
        matches = list(torchscript_archives._CLASS_RE.finditer(text))
        assert [m.group(1) for m in matches] == ["Tree"]

    return bench.median(read, warmup=0, repeats=repeats)


def stride0_refusal(bench: Bench, folder: Path, repeats: int) -> tuple[float, int]:
    """(seconds, peak resident memory growth in bytes) of refusing a stride-0 view of 3e9 elements."""
    path = folder / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(3_000_000_000)}, path)

    def refuse():
        try:
            load_official_checkpoint(path)
        except ValueError:
            return
        raise AssertionError(f"{path} was not refused")

    with bench.peak_memory() as peak:
        seconds = bench.median(refuse, warmup=0, repeats=repeats)
    return seconds, peak["peak_bytes"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    n = args.spaces_mib * 2**20
    bench = Bench(torch.device("cpu"))
    one, two = class_reader_seconds(bench, n, args.repeats), class_reader_seconds(bench, 2 * n, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        seconds, growth = stride0_refusal(bench, Path(folder), args.repeats)
    result = {
        "class_reader": {
            "spaces_mib": args.spaces_mib,
            "seconds_n": one,
            "seconds_2n": two,
            "ratio": two / one,
        },
        "stride0_refusal": {"seconds": seconds, "peak_memory_growth_bytes": growth},
    }
    print("| case | time | |\n|---|---|---|")
    print(f"| class reader, {args.spaces_mib} MiB of spaces | {one * 1e3:.1f} ms | |")
    print(f"| class reader, {2 * args.spaces_mib} MiB of spaces | {two * 1e3:.1f} ms | x{two / one:.2f} |")
    print(
        f"| stride-0 view of 3e9 elements refused | {seconds * 1e3:.1f} ms | peak +{growth / 2**20:.1f} MiB |"
    )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
