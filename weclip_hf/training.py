"""What a WeCLIP training loop needs besides the model: the collator that gives the model its training inputs, and
the official optimizer with its warm-up + poly schedule. ``examples/train.py`` uses them; so does
`weclip_hf.trainer.WeCLIPTrainer`, and a plain `transformers.Trainer` takes them as
``Trainer(..., data_collator=WeCLIPDataCollator(), optimizers=create_optimizer_and_scheduler(model, recipe))``
with ``TrainingArguments(label_names=["class_labels"])`` (``["labels"]`` for ``fully_supervised``): without it
Trainer expects both label arguments of the forward in every batch and evaluates no loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .presets import TrainingRecipe


@dataclass(frozen=True)
class WeCLIPDataCollator:
    """Stacks training examples (`weclip_hf.data.batches.WeakSegmentationDataset`'s) into the model's keyword
    arguments: ``pixel_values`` and the multi-hot ``class_labels`` always; the masks as ``labels`` only with
    ``fully_supervised`` (else the model learns from its pseudo labels, and the masks it was given would silently
    make the training fully supervised); the crops' ``pixel_mask`` only with ``ignore_padding`` (padding ignored
    in the pseudo labels; the official code lets the method see it)."""

    fully_supervised: bool = False
    ignore_padding: bool = False

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        keys = ["pixel_values", "class_labels"]
        if self.fully_supervised:
            if "labels" not in examples[0]:
                raise ValueError(
                    "fully_supervised=True trains on masks, and the training examples have none: give the "
                    "dataset a mask column."
                )
            keys.append("labels")
        if self.ignore_padding:
            if "pixel_mask" not in examples[0]:
                raise ValueError(
                    "ignore_padding=True needs each example's pixel_mask (1 for image pixels, 0 for crop padding), "
                    "and the training examples have none: WeakSegmentationDataset's have one."
                )
            keys.append("pixel_mask")
        check_one_size(examples)
        return {key: torch.stack([example[key] for example in examples]) for key in keys}


def check_one_size(examples: list[dict[str, torch.Tensor]]) -> None:
    """Refuse examples whose images differ in size (a batch of an evaluation set of VOC-like images): they do not
    stack (torch raised a bare RuntimeError)."""
    sizes = sorted({tuple(example["pixel_values"].shape[-2:]) for example in examples})
    if len(sizes) > 1:
        raise ValueError(
            f"WeCLIPDataCollator stacks a batch's images, and these differ in size (height, width): {sizes}. "
            "Evaluate images of different sizes with per_device_eval_batch_size=1, or with "
            "weclip_hf.trainer.WeCLIPTrainer, which batches them by size."
        )


def global_batch(per_device: int, processes: int) -> str:
    """One optimizer step's images, in words for messages: "batch of 4 images", or with several processes "global
    batch of 4 x 2 processes = 8 images"."""
    if processes == 1:
        return f"batch of {per_device} images"
    return f"global batch of {per_device} x {processes} processes = {per_device * processes} images"


def check_fills_a_batch(num_images: int, per_device: int, processes: int) -> None:
    """Refuse a training set of fewer images than one global batch: a loader of whole batches (``drop_last``) gives
    it none, so the run would train no step and then save and score its model as a trained one."""
    if num_images < per_device * processes:
        raise ValueError(
            f"{num_images} training images are fewer than one {global_batch(per_device, processes)}: train on more "
            "images, or give a smaller --per_device_train_batch_size (or fewer processes)."
        )


def warmup_poly_factor(num_warmup_steps: int, max_train_steps: int) -> Callable[[int], float]:
    """The official learning-rate factor at step t: warm-up ``1 - (1 - t/W)(1 - 1e-6)`` for t < W, then the poly
    decay (power 1) ``1 - t/T`` of the whole schedule, floored at 0."""

    def factor(t: int) -> float:
        if t < num_warmup_steps:
            return 1 - (1 - t / num_warmup_steps) * (1 - 1e-6)
        return max(0.0, 1 - t / max_train_steps)

    return factor


def create_optimizer_and_scheduler(
    model: nn.Module, recipe: TrainingRecipe
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The official optimizer of the trainable parameters (AdamW, betas (0.9, 0.999), eps 1e-8, the recipe's
    learning rate and weight decay on every parameter) and its warm-up + poly schedule, stepped once per
    optimizer step: ``Trainer(optimizers=...)`` takes the pair as it is."""
    optimizer = official_adamw(model, recipe.learning_rate, recipe.weight_decay)
    schedule = warmup_poly_factor(recipe.num_warmup_steps, recipe.max_train_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def official_adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, the weight decay on every one of them (biases and LayerNorms
    included, as the official code; transformers' `Trainer` exempts them); ``fused``: torch's fused kernels
    (None: torch's default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameter: nothing to optimize.")
    return torch.optim.AdamW(
        params, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
    )


def schedule_notes(
    cfg,
    counter: int,
    max_train_steps: int,
    rfm_source: str = "--rfm_start_step, or --preset, sets it",
    rfm_aside: str = "",
) -> list[str]:
    """Notes on when the RFM (and WeCLIP+'s self-training) act in a run of ``max_train_steps``: the model switches
    them on by its own step counter (``training_step``: the steps done), which a model of ``--model_name_or_path``
    brings from its training at ``counter``; a stage that starts at ``n`` acts after ``n`` steps, from the run's
    step ``n - counter + 1`` (steps counted from 1, as the logs count them). ``rfm_source``: what sets
    the RFM's start in the calling script; ``rfm_aside``: added to the note of an RFM that never acts (what the
    script reports of it all the same)."""
    # WeCLIP+'s pseudo labels without its RFM+: its GradCAMs weighted by the prediction, propagated by the attention
    cams = "prediction-weighted CAMs'" if getattr(cfg, "model_type", "") == "weclip_plus" else "CAMs'"
    stages = (
        ("the RFM", cfg.rfm_start_step, rfm_source, f"the pseudo labels are the {cams}", rfm_aside),
        ("WeCLIP+'s self-training", getattr(cfg, "self_training_start_step", None),
         "config.self_training_start_step", "the prediction never overwrites the pseudo labels", ""),
    )  # fmt: skip
    origin = f" (the model of --model_name_or_path has trained {counter} steps)" if counter else ""
    steps = "model steps" if counter else "steps"
    notes = []
    for what, start, source, never, aside in stages:
        if start is None:
            continue
        first = start - counter + 1  # this run's first step with it
        if first > max_train_steps:
            notes.append(
                f"{what} acts after {start} {steps}, and this run ends after {counter + max_train_steps} "
                f"{steps}{origin}: {never} throughout ({source}).{aside}"
            )
        elif counter:
            when = "its first step" if first <= 1 else f"its step {first}"
            notes.append(f"{what} acts in this run from {when}: after {start} {steps} ({source}){origin}.")
    return notes
