"""`WeCLIPTrainer`: transformers' `Trainer` with WeCLIP's collator, the official optimizer and schedule built from
the `TrainingArguments`, and an evaluation that scores segmentations (mIoU) instead of a loss."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer

from .data.loading import collate
from .evaluation import evaluate_segmentation
from .presets import EvaluationSettings
from .training import WeCLIPDataCollator, official_adamw, warmup_poly_factor

# `TrainingArguments.optim` values that mean AdamW: WeCLIPTrainer then builds the official one
ADAMW_NAMES = frozenset({"adamw_torch", "adamw_torch_fused"})


def _name(option) -> str:
    """A `TrainingArguments` choice (an enum member or its string) as its string."""
    return getattr(option, "value", option)


class WeCLIPTrainer(Trainer):
    """`Trainer` for WeCLIP and WeCLIP+.

    Differences from `Trainer`, each where the arguments leave it the choice:
    - ``data_collator`` defaults to `WeCLIPDataCollator()` (weak supervision: the masks of the training set never
      reach the model);
    - with ``optim`` AdamW (the default) the optimizer is the official one (`official_adamw`: weight decay on every
      parameter) with the arguments' learning rate, weight decay, betas and epsilon; with ``lr_scheduler_type``
      "linear" (the default) the schedule is the official linear decay, ``1 - t/T`` over the whole run after
      ``warmup_steps`` of warm-up (`warmup_poly_factor`; `Trainer`'s decays from 1 at the warm-up's end). Other
      values, or ``optimizers=``, get `Trainer`'s own;
    - `evaluate` scores ``eval_dataset`` (`weclip_hf.data.loading.evaluation_set`: images with their masks at the
      original size) with `evaluate_segmentation` and returns ``{prefix}_{mode}_miou`` per mode of ``eval_modes``
      ("pred": the decoder, "pseudo": the RFM pseudo labels, ...), so that ``eval_strategy``, callbacks and
      ``metric_for_best_model="pred_miou"`` work; every process scores every N-th image and the confusion
      matrices are summed.
    """

    def __init__(
        self,
        model=None,
        args=None,
        data_collator=None,
        *trainer_args,
        eval_modes: Sequence[str] = ("pred", "pseudo"),
        eval_long_side: int | None = None,
        eval_scales: Sequence[float] = EvaluationSettings.msf_scales,
        **trainer_kwargs,
    ):
        collator = WeCLIPDataCollator() if data_collator is None else data_collator
        super().__init__(model, args, collator, *trainer_args, **trainer_kwargs)
        self.eval_modes, self.eval_long_side, self.eval_scales = (
            tuple(eval_modes),
            eval_long_side,
            eval_scales,
        )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The official AdamW for ``optim`` AdamW, else `Trainer`'s optimizer."""
        if self.optimizer is None and _name(self.args.optim) in ADAMW_NAMES:
            args = self.args
            betas = (args.adam_beta1, args.adam_beta2)
            self.optimizer = official_adamw(
                self.model if model is None else model,
                args.learning_rate,
                args.weight_decay,
                betas,
                args.adam_epsilon,
            )
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The official warm-up + linear decay for ``lr_scheduler_type`` "linear", else `Trainer`'s schedule."""
        if self.lr_scheduler is None and _name(self.args.lr_scheduler_type) == "linear":
            factor = warmup_poly_factor(self.args.get_warmup_steps(num_training_steps), num_training_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(
        self,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """mIoU of each of ``eval_modes`` on ``eval_dataset`` (default: the trainer's), logged and returned as
        ``{metric_key_prefix}_{mode}_miou`` with ``{metric_key_prefix}_runtime``; a dict of datasets is scored
        per name (``eval_{name}_...``), as `Trainer` does."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError(
                "WeCLIPTrainer.evaluate needs an eval_dataset: images with their masks "
                "(weclip_hf.data.loading.evaluation_set)."
            )
        if isinstance(dataset, dict):
            metrics = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        started = time.time()
        accelerator = self.accelerator
        shard = Subset(dataset, range(accelerator.process_index, len(dataset), accelerator.num_processes))
        loader = DataLoader(shard, batch_size=self.args.per_device_eval_batch_size, collate_fn=collate)
        scores = evaluate_segmentation(
            self.model,
            loader,
            self.eval_modes,
            scales=self.eval_scales,
            long_side=self.eval_long_side,
            accelerator=accelerator,
            progress=False,
        )
        metrics = {f"{metric_key_prefix}_{mode}_miou": result["mean_iou"] for mode, result in scores.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - started, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
