"""The parts of examples/train.py's training loop: the training DataLoader, one optimizer step (its seed, the losses'
finiteness check that also agrees on a stop signal) and the training log (train_log.jsonl).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from training.computation import default_num_workers
from weclip_hf.data.batches import EpochShuffleSampler, StreamingWeakSegmentationDataset
from weclip_hf.losses import LOSS_TERMS, present_losses
from weclip_hf.modeling_weclip import WeCLIPSemanticSegmenterOutput
from weclip_hf.training import WeCLIPDataCollator, check_fills_a_batch

# the losses of the training log: the total and every term
LOGGED_LOSSES = ("loss", *LOSS_TERMS)


def check_losses_finite(out, step: int, gather=None, stop_signal: int = 0) -> int:
    """Raise `FloatingPointError` naming the first non-finite loss term of ``out``; return the signal (Ctrl-C /
    SIGTERM) that this process (``stop_signal``) or another got, the largest number; 0 for none. One host read per
    step.

    ``gather``: `Accelerator.gather`: the finite flag and the signal travel in one gather, so that every process
    stops at the same step when one has a non-finite loss or got the signal (instead of the others waiting forever
    in the backward's all-reduce, or at the checkpoint's barrier while one trains on)."""
    terms = present_losses(out, LOSS_TERMS)
    if not terms:
        raise ValueError(
            f"The model returned none of the loss terms {list(LOSS_TERMS)}: nothing to train on."
        )
    finite = torch.stack([v.detach().float() for v in terms.values()]).isfinite().all().to(torch.int32)
    flags = torch.stack([finite, finite.new_tensor(int(stop_signal))]).reshape(1, 2)
    flags = (gather(flags) if gather else flags).reshape(-1, 2).cpu()
    if bool(flags[:, 0].all()):
        return int(flags[:, 1].max())
    bad = [(name, value) for name, value in terms.items() if not torch.isfinite(value)]
    where = f"{LOSS_TERMS[bad[0][0]]} loss ({bad[0][1].item()})" if bad else "loss in another process"
    raise FloatingPointError(
        f"Non-finite {where} at step {step}; weights were not updated. "
        "Resume from the last checkpoint with a lower --learning_rate or check the data."
    )


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a training batch to ``device`` (asynchronously from pinned memory), except ``class_labels``."""
    return {k: v if k == "class_labels" else v.to(device, non_blocking=True) for k, v in batch.items()}


def step_seed(seed: int, step: int, process_index: int) -> int:
    """The seed of one process's step (its decoder dropout): a function of (seed, step, process), so that a resumed
    run repeats an uninterrupted one exactly. Processes 0-63: ``(seed * 1_000_003 + step) * 64 + process``, as
    always, distinct for every (step, process); further ones (whose formula would repeat process 0's seed of a
    later step) a 64-bit hash of the three (`numpy.random.SeedSequence`)."""
    if process_index < 64:
        return ((seed * 1_000_003 + step) * 64 + process_index) % 2**64  # torch.manual_seed's range
    return int(np.random.SeedSequence([seed % 2**64, step, process_index]).generate_state(1, np.uint64)[0])


def training_step(
    args: argparse.Namespace,
    accelerator: Accelerator,
    train_forward: Callable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: dict,
    step: int,
    stop_signal: int = 0,
) -> tuple[WeCLIPSemanticSegmenterOutput, int]:
    """One optimizer step on ``batch`` (moved to the device here); returns the model output and the signal that a
    process got (its number, 0 for none; ``stop_signal``: this process's), agreed by all (`check_losses_finite`)."""
    batch = to_device(batch, accelerator.device)
    torch.manual_seed(step_seed(args.seed, step, accelerator.process_index))
    out = train_forward(**batch)  # what `WeCLIPDataCollator` chose for --fully_supervised / --ignore_padding
    gather = accelerator.gather if accelerator.num_processes > 1 else None
    stop = check_losses_finite(out, step, gather, stop_signal)
    accelerator.backward(out.loss)
    optimizer.step()
    # fp16: a step the gradient scaler skipped (inf/NaN gradients) leaves the learning-rate schedule where it is,
    # as transformers' Trainer does
    if not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return out, stop


def make_train_loader(
    args, train_set, accelerator: Accelerator
) -> tuple[DataLoader, EpochShuffleSampler | None]:
    """The training DataLoader (whole batches of what the model is to be given: `WeCLIPDataCollator`) and, for a
    map-style dataset, its epoch-keyed sampler."""
    streamed = isinstance(train_set, StreamingWeakSegmentationDataset)
    sampler = None if streamed else EpochShuffleSampler(len(train_set), seed=args.seed)
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = default_num_workers(accelerator.device.type, accelerator.num_processes)
    train_loader = DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=WeCLIPDataCollator(args.fully_supervised, args.ignore_padding),
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    # batches stay on the host: `to_device` moves all but the image-level labels, from which the model
    # plans its (image, class) pairs without a device-to-host sync
    train_loader = accelerator.prepare_data_loader(train_loader, device_placement=False)
    if not streamed:
        check_fills_a_batch(len(train_set), args.per_device_train_batch_size, accelerator.num_processes)
    return train_loader, sampler


def append_log(log_path: Path, record: dict) -> None:
    """One JSON line of the training log (``train_log.jsonl``)."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_losses(accelerator: Accelerator, out, step: int, lr: float, log_path: Path) -> dict:
    """The step's losses (mean over processes), learning rate and RFM flag, to the trackers and the log (main
    process); returns the record."""
    # under DDP each process's loss is scaled so that their mean is the global-batch loss
    named = present_losses(out, LOGGED_LOSSES)
    losses = accelerator.reduce(torch.stack(list(named.values())).detach(), "mean").tolist()
    record = {"step": step, **dict(zip(named, losses)), "lr": lr, "rfm": bool(out.used_rfm)}
    accelerator.log(record, step=step)
    if accelerator.is_main_process:
        append_log(log_path, record)
    return record
