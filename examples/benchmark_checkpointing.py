"""What gradient checkpointing saves in a training step: the bytes of the tensors autograd keeps for the backward
(each storage counted once), without and with ``model.activation_checkpointing_enable()``, and the decoder's
gradients of both runs compared.

    python examples/benchmark_checkpointing.py                 # ViT-B/16 (random), VOC classes, crop 320, batch 4
    python examples/benchmark_checkpointing.py --tiny          # the test config, in seconds

Same random model and synthetic batch as `examples/benchmark.py`; the RFM on, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from benchmarking.workloads import build_model, synthetic_batch

from weclip_hf.decoder import WeCLIPDecoderBlock


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny test config instead of ViT-B/16")
    p.add_argument(
        "--crop", type=int, default=320, help="training crop side (default 320; --tiny: at most 64)"
    )
    p.add_argument("--batch_size", type=int, default=4, help="images per training step (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--output_json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def saved_bytes(model, pixel_values, class_labels) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """One forward and backward: the bytes autograd saved for the backward, in all and in the decoder's
    transformer blocks (each storage once), and the gradients of the trainable weights."""
    torch.manual_seed(0)  # the same dropout masks in both runs
    seen: set[int] = set()
    totals = {"all": 0, "decoder_blocks": 0}
    in_block = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            totals["all"] += storage.nbytes()
            if in_block[0]:
                totals["decoder_blocks"] += storage.nbytes()
        return tensor

    def enter(*_):
        in_block[0] += 1

    def leave(*_):
        in_block[0] -= 1

    blocks = [m for m in model.modules() if isinstance(m, WeCLIPDecoderBlock)]
    handles = [
        h for b in blocks for h in (b.register_forward_pre_hook(enter), b.register_forward_hook(leave))
    ]
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(pixel_values, class_labels=class_labels, use_rfm=True)
    out.loss.backward()
    for handle in handles:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return totals, grads


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cpu")
    model = build_model(args.tiny, device, args.seed).train()
    crop = min(args.crop, 64) if args.tiny else args.crop
    pixel_values, class_labels = synthetic_batch(
        args.batch_size, crop, crop, model.config.num_foreground_classes, device, args.seed
    )
    without, grads_without = saved_bytes(model, pixel_values, class_labels)
    model.activation_checkpointing_enable()
    with_checkpointing, grads_with = saved_bytes(model, pixel_values, class_labels)
    model.activation_checkpointing_disable()
    difference = max((grads_with[n] - g).abs().max().item() for n, g in grads_without.items())
    mib = 2.0**20
    print(f"crop {crop}, batch {args.batch_size}, {'tiny config' if args.tiny else 'ViT-B/16'}, fp32, RFM on")
    print("| saved for backward | without | with checkpointing |\n|---|---|---|")
    for key, name in (("all", "all tensors"), ("decoder_blocks", "decoder's transformer blocks")):
        print(f"| {name} | {without[key] / mib:.1f} MiB | {with_checkpointing[key] / mib:.1f} MiB |")
    print(f"largest difference of the gradients: {difference:.2e}")
    result = {"without": without, "with": with_checkpointing, "max_grad_difference": difference, **vars(args)}
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
