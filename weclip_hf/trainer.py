"""`WeCLIPTrainer`: transformers' `Trainer` with WeCLIP's collator, the official optimizer and schedule built from
the `TrainingArguments`, and an evaluation that scores segmentations (mIoU) instead of a loss."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path

import torch
from accelerate.utils import DynamoBackend, TorchDynamoPlugin
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, speed_metrics

from .checkpointing import TRAINING_ARGS_NAME, CheckpointError, Computation, compile_mode_in_effect
from .data.batches import collate_by_size, process_subset
from .evaluation import MIOU_NAMES, MODES, evaluate_segmentation, processor_input_size
from .json_files import read_json_if_present
from .losses import LOSS_TERMS, present_losses
from .model_card import card_repo_id, make_model_card, save_model_card, split_model_metrics
from .normalization import PixelNormalization
from .training import WeCLIPDataCollator, official_adamw, warmup_poly_factor
from .trajectory import ScriptTerms

# `TrainingArguments.optim` values that mean torch's AdamW: WeCLIPTrainer then builds the official one
ADAMW_NAMES = frozenset({"adamw_torch", "adamw_torch_fused"})


def _name(option: str | Enum) -> str:
    """A `TrainingArguments` choice (an enum member or its string) as its string."""
    return getattr(option, "value", option)


def _normalization(dataset) -> PixelNormalization | None:
    """The pixel statistics of an evaluation set (`EvalSegmentationDataset.normalization`), also through
    `torch.utils.data.Subset` and other wrappers that keep the wrapped set as ``.dataset``; None if none says."""
    while dataset is not None and not hasattr(dataset, "normalization"):
        dataset = getattr(dataset, "dataset", None)
    return getattr(dataset, "normalization", None)


# `TrainingArguments` that shape the weights a run's steps produce (the batch, the optimizer and its schedule, the
# seeds, the arithmetic); the others (how often it logs, evaluates and saves, where to, the loader's workers) are not
# checked when a run is resumed (`Trainer` itself keeps the checkpoint's logging, eval and save steps). With the
# number of processes (the global batch), `trajectory_arguments` records them.
TRAJECTORY_ARGUMENTS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "dataloader_drop_last", "train_sampling_strategy",
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
    "optim_args", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "max_steps", "num_train_epochs",
    "seed", "data_seed", "bf16", "fp16", "label_smoothing_factor",
)  # fmt: skip


def trajectory_arguments(args: TrainingArguments) -> dict:
    """The `TRAJECTORY_ARGUMENTS` of ``args`` and its ``world_size`` (as JSON values): what a resumed run repeats."""
    values = args.to_dict()
    recorded = {name: values[name] for name in TRAJECTORY_ARGUMENTS if name in values}
    return json.loads(json.dumps({**recorded, "world_size": args.world_size}))


# how a run computed (`trainer_computation`), which each checkpoint of examples/train_with_trainer.py records (absent:
# one written before it did) and a resume that computes otherwise is warned of (`computation_change_warning`)
COMPUTATION_NAME = "computation.json"
# how examples/train_with_trainer.py is told to compute so: `TrainingArguments` flags, the threads by the environment
# (train.py's: `weclip_hf.trajectory.TRAIN_TERMS`)
TRAINER_TERMS = ScriptTerms(
    cpu="on the CPU (--use_cpu)",
    device="on a {device} device (without --use_cpu)",
    compile_off="without --torch_compile (nor --torch_compile_backend or --torch_compile_mode, which turn it on)",
    threads="torch threads per process (OMP_NUM_THREADS, by default the cores available)",
    set_threads="with OMP_NUM_THREADS={threads}",
    figures="eval_results.json",
)


def trainer_computation(args: TrainingArguments) -> Computation:
    """How `Trainer` computes with ``args``, which orders its float sums: the device type; torch.compile as
    accelerate's plugin that `Trainer` builds runs it (its ACCELERATE_DYNAMO_* environment too): without
    --torch_compile_backend the backend `TrainingArguments` picks, inductor on a CPU or GPU, and without
    --torch_compile_mode accelerate's "default", which is inductor's default mode on every device (examples/train.py
    picks reduce-overhead on a GPU) and, for another backend, its own default (torch passes it no mode), recorded
    None as train.py records it; and a CPU run's torch threads (OMP_NUM_THREADS, else torch's or accelerate's
    default; None on an accelerator)."""
    device = args.device.type
    threads = torch.get_num_threads() if device == "cpu" else None
    try:
        plugin = TorchDynamoPlugin(backend=args.torch_compile_backend, mode=args.torch_compile_mode)
    except ValueError as error:  # accelerate's names the backend in capitals only
        known = ", ".join(backend.value.lower() for backend in DynamoBackend if backend != DynamoBackend.NO)
        raise ValueError(
            f"--torch_compile_backend {args.torch_compile_backend!r} is no torch.compile backend accelerate runs "
            f"({error}): give one of {known}."
        ) from error
    if plugin.backend == DynamoBackend.NO:
        return Computation(device, torch_compile=False, threads=threads)
    backend = plugin.backend.value.lower()
    return Computation(device, True, backend, compile_mode_in_effect(backend, plugin.mode), threads)


def recorded_computation(path: Path) -> Computation:
    """How the run of Trainer checkpoint ``path`` computed (its ``computation.json``); nothing recorded (every item
    None: nothing is compared) for a checkpoint written before the record."""
    file = path / COMPUTATION_NAME
    recorded = read_json_if_present(file, expect=dict, error=CheckpointError)
    try:
        return Computation(**(recorded or {}))
    except TypeError as error:  # a key of no Computation item
        raise CheckpointError(f"{file} is not a record of how a run computed: {error}") from None


class RecordRunCallback(TrainerCallback):
    """Writes ``values`` (a run's arguments that shape its training, JSON) as ``training_args.json`` into every
    checkpoint `Trainer` saves, so that a run resumed from it can be compared with the run that wrote it
    (`weclip_hf.checkpointing.check_unchanged`; `Trainer`'s own ``training_args.bin`` is a pickle), and
    ``computation`` (`trainer_computation`) as ``computation.json``, which a resume compares
    (`weclip_hf.trajectory.computation_change_warning` with `TRAINER_TERMS`)."""

    def __init__(self, values: dict, computation: Computation):
        self.values = values
        self.computation = computation

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def write(self, folder: Path) -> None:
        """The records into checkpoint ``folder``: on save, and by `WeCLIPTrainer` before it pushes the checkpoint
        (`Trainer` pushes before the callbacks' ``on_save``)."""
        records = {
            TRAINING_ARGS_NAME: self.values,
            COMPUTATION_NAME: dataclasses.asdict(self.computation),
        }
        for name, record in records.items():
            (folder / name).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


class UnpickledSecret(str):
    """A secret (the Hub token) that pickles, and so `torch.save`s, as None: `Trainer` pickles its
    `TrainingArguments` as ``training_args.bin`` into the output folder, every checkpoint and every Hub commit it
    pushes. Used as a string it is the secret; copies keep it."""

    def __reduce__(self):
        return type(None), ()

    def __copy__(self) -> UnpickledSecret:
        return self

    def __deepcopy__(self, memo) -> UnpickledSecret:
        return self


class TrainingSetEpochCallback(TrainerCallback):
    """Gives the training set its epoch (which seeds its crops and flips, `WeakSegmentationDataset.set_epoch`) at the
    start of every epoch, also of the epoch a resumed run starts in the middle of: the loader that skips the batches
    already trained does not, so a run resumed within its second epoch or later drew the first epoch's crops.
    `WeCLIPTrainer` adds it; give it to a plain `Trainer` as ``callbacks=[TrainingSetEpochCallback()]``."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        # a resumed run's state.epoch: the epochs done + the part of this one
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))


class StopOnSignalCallback(TrainerCallback):
    """Ends the training after the step in which Ctrl-C / SIGTERM came in (``stop``: the record of
    `weclip_hf.run_signals.stop_on_signals`, around ``train()``), saving a checkpoint of that step first (also off
    ``save_steps``; an evaluation due then is skipped: the checkpoint first, within a signal's grace period), as
    examples/train.py stops; `Trainer` alone saves nothing and loses every step since its last checkpoint (with
    ``save_total_limit=1`` that checkpoint is kept beside the best one). Several processes agree on the signal at
    every step, so that all stop after the same one. ``signal``: the signal that stopped the training (0: none)."""

    def __init__(self, stop: dict):
        self.stop = stop
        self.signal = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.signal = agreed_signal(self.stop["signal"] or 0, args)
        if self.signal:
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True
            # Trainer's end of training with save_total_limit 1 removes every checkpoint but the best: this one,
            # where the run resumes, is kept (the rotation on saving it keeps the best one too)
            if args.save_total_limit == 1:
                args.save_total_limit = 2
        return control


def agreed_signal(signum: int, args: TrainingArguments) -> int:
    """The largest of every process's ``signum`` (0: none), the same in each; ``signum`` itself in one process."""
    if args.world_size == 1 or not torch.distributed.is_initialized():
        return signum
    flag = torch.tensor([signum], device=args.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


class WeCLIPTrainer(Trainer):
    """`Trainer` for WeCLIP and WeCLIP+.

    Differences from `Trainer`, each where the arguments leave it the choice:
    - ``data_collator`` defaults to `WeCLIPDataCollator()` (weak supervision: the masks of the training set never
      reach the model);
    - with ``optim`` AdamW (the default) the optimizer is the official one (`official_adamw`: weight decay on every
      parameter) with the arguments' learning rate, weight decay, betas, epsilon and fused choice; with
      ``lr_scheduler_type`` "linear" (the default) the schedule is the official linear decay, ``1 - t/T`` over the
      whole run after ``warmup_steps`` of warm-up (`warmup_poly_factor`; `Trainer`'s decays from 1 at the warm-up's
      end). Another ``optim`` or ``lr_scheduler_type``, ``optimizer_cls_and_kwargs=`` or ``optimizers=`` (a given
      optimizer keeps `Trainer`'s schedule too) get `Trainer`'s own;
    - its training logs give each loss term (``seg_loss``, ``affinity_loss``; WeCLIP+'s ``dice_loss`` and
      cross-branch ones) beside ``loss``, as examples/train.py's do;
    - the model's step counter, which starts the RFM, counts optimizer steps also with gradient accumulation, and
      the training set's epoch (its crops) is right also in a run resumed mid-epoch (`TrainingSetEpochCallback`);
    - `evaluate` scores ``eval_dataset`` (`weclip_hf.data.labelled_sets.evaluation_set`: images with their masks at
      the original size; the model predicts on images resized to ``eval_long_side`` when given, else as
      ``processing_class`` resizes them: the pipeline's predictions) with `evaluate_segmentation` under the run's
      mixed precision, and returns
      per mode of ``eval_modes`` ("pred": the decoder, "pseudo": the RFM pseudo labels, "cam", "pred_msf", the CRF
      modes with the dataset's ``normalization``) its mIoU under train.py's metrics.json name (``eval_miou``,
      ``eval_pseudo_label_miou``, ``eval_cam_miou``, ...: `MIOU_NAMES`; NaN where no pixel could be scored), so
      that ``eval_strategy``, callbacks and ``metric_for_best_model="miou"`` work; every process scores every
      N-th image and the confusion matrices are summed. ``compute_metrics`` and ``preprocess_logits_for_metrics``
      are refused (no logits are gathered for them), ``predict`` is not supported (see its error).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        *trainer_args,
        eval_modes: Sequence[str] = ("pred", "pseudo"),
        eval_long_side: int | None = None,
        eval_scales: Sequence[float] | None = None,
        **trainer_kwargs,
    ):
        unknown = sorted(set(eval_modes) - set(MODES))
        if unknown or not eval_modes:
            raise ValueError(f"eval_modes {list(eval_modes)}: choose one or more of {list(MODES)}.")
        collator = WeCLIPDataCollator() if data_collator is None else data_collator
        super().__init__(model, args, collator, *trainer_args, **trainer_kwargs)
        if self.args.hub_token:  # never in training_args.bin (pushed to the Hub with the model)
            self.args.hub_token = UnpickledSecret(self.args.hub_token)
        self.add_callback(TrainingSetEpochCallback)
        self.eval_modes = tuple(eval_modes)
        self._check_unsupported_arguments()
        self.eval_long_side = eval_long_side
        self.eval_scales = eval_scales
        self._optimizer_given = self.optimizer is not None
        # the loss terms of the training forwards since the last log: (names, sums, forwards)
        self._loss_terms: tuple[list[str], torch.Tensor, int] | None = None

    def _check_unsupported_arguments(self) -> None:
        """Refuse, at once, what the arguments ask for that this trainer cannot do: label smoothing (WeCLIP's losses
        take none; it was ignored, or crashed with full supervision) and a ``metric_for_best_model`` its evaluation
        does not report (found only at the first evaluation, maybe thousands of steps in); metric functions, which
        it would never call; a model config that its first checkpoint could not save (`WeCLIPConfig.validate`)."""
        config = getattr(self.model, "config", None)
        if callable(getattr(config, "validate", None)):
            config.validate()
        for name in ("compute_metrics", "preprocess_logits_for_metrics"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"WeCLIPTrainer does not call {name}: its evaluate() scores label maps itself (the mIoU of each "
                    "of eval_modes, weclip_hf.evaluation.evaluate_segmentation) and gathers no logits. Choose the "
                    f"figures with eval_modes (any of {list(MODES)}) and leave {name} out."
                )
        args = self.args
        if args.label_smoothing_factor:
            raise ValueError(
                f"label_smoothing_factor={args.label_smoothing_factor}: WeCLIP's segmentation and affinity losses take "
                "no label smoothing; leave it at 0."
            )
        self._check_best_model_metric()

    def _check_best_model_metric(self) -> None:
        """Refuse a ``metric_for_best_model`` that the evaluation during training does not report: `Trainer` looks
        it up at every evaluation (for the best checkpoint, ``load_best_model_at_end``, ``save_strategy="best"``,
        ``lr_scheduler_type="reduce_lr_on_plateau"``, which also default it to "loss") and raised a KeyError there."""
        args = self.args
        metric = args.metric_for_best_model
        if metric is None or _name(args.eval_strategy) == "no":
            return
        names = [MIOU_NAMES[mode] for mode in self.eval_modes]
        # eval_<set>_<name> for a dict of sets
        sets = list(self.eval_dataset) if isinstance(self.eval_dataset, dict) else [""]
        reported = [f"eval_{f'{s}_' if s else ''}{name}" for s in sets for name in names]
        if metric in reported or f"eval_{metric}" in reported:
            return
        users = [
            "load_best_model_at_end" if args.load_best_model_at_end else "",
            'save_strategy="best"' if _name(args.save_strategy) == "best" else "",
            f"lr_scheduler_type={_name(args.lr_scheduler_type)!r}"
            if _name(args.lr_scheduler_type) in ("reduce_lr_on_plateau", "greedy")
            else "",
        ]
        users = ", ".join(user for user in users if user) or "the record of the best model, state.best_metric"
        raise ValueError(
            f"metric_for_best_model={metric!r}, which the evaluation does not report, is looked up at every "
            f"evaluation during training ({users}): set metric_for_best_model to one of {reported} (the mIoU of "
            f"eval_modes {list(self.eval_modes)}; WeCLIPTrainer reports no loss, the metric transformers picks when "
            "load_best_model_at_end or a plateau schedule is given none)."
        )

    def _evaluation_input_size(self) -> int | dict[str, int] | None:
        """What the evaluation resizes the images to: ``eval_long_side`` when given, else as ``processing_class``
        (a WeCLIP image processor) resizes them, so that the figures are the pipeline's; else their own size."""
        if self.eval_long_side is not None:
            return self.eval_long_side
        return processor_input_size(self.processing_class)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """`Trainer`'s push of a checkpoint's model files, with the model's code files (``*.py``, which
        ``auto_map`` names): without them a "Training in progress" commit did not load with
        ``trust_remote_code=True``; a checkpoint pushed whole (``hub_strategy`` "checkpoint", "all_checkpoints")
        holds the records of the `RecordRunCallback`s, which a run resumed from it checks (written on save, after
        this push, they were missing from it)."""
        if self.is_world_process_zero():
            for code in Path(checkpoint_folder).glob("*.py"):
                shutil.copy(code, Path(self.args.output_dir) / code.name)
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, RecordRunCallback):
                    callback.write(Path(checkpoint_folder))
        super()._push_from_checkpoint(checkpoint_folder)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """`Trainer.training_step` with the model's step counter (which starts the RFM at ``rfm_start_step``) set to
        the optimizer step: with ``gradient_accumulation_steps`` every forward of a step counts as that step, as in
        ``examples/train.py`` (the counter would otherwise count forwards)."""
        self.accelerator.unwrap_model(model).set_training_step(self.state.global_step)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """`Trainer.compute_loss`, summing the loss terms of training forwards (segmentation, affinity; WeCLIP+'s
        Dice and cross-branch ones: `LOSS_TERMS`) for `log`, which gives their means beside ``loss``."""
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        terms = present_losses(outputs, LOSS_TERMS)
        if model.training and terms:
            values = torch.stack([t.detach().float() for t in terms.values()])
            names, sums, count = self._loss_terms or (list(terms), torch.zeros_like(values), 0)
            self._loss_terms = (names, sums + values, count + 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log`, a training log with the mean of each loss term since the last one (over every process)."""
        if "loss" in logs and self._loss_terms is not None:
            names, sums, count = self._loss_terms
            means = self.accelerator.gather(sums / count).view(-1, len(names)).mean(dim=0)
            logs = {**logs, **dict(zip(names, means.tolist()))}
            self._loss_terms = None
        super().log(logs, start_time)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The official AdamW for ``optim`` AdamW, else `Trainer`'s optimizer."""
        args = self.args
        optim = _name(args.optim)
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None and optim in ADAMW_NAMES:
            self.optimizer = official_adamw(
                self.model if model is None else model,
                args.learning_rate,
                args.weight_decay,
                (args.adam_beta1, args.adam_beta2),
                args.adam_epsilon,
                fused=optim == "adamw_torch_fused",
            )
        return super().create_optimizer(model)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The official warm-up + linear decay for ``lr_scheduler_type`` "linear" and an optimizer this trainer
        built, else `Trainer`'s schedule."""
        official = _name(self.args.lr_scheduler_type) == "linear" and not self._optimizer_given
        if self.lr_scheduler is None and official:
            factor = warmup_poly_factor(self.args.get_warmup_steps(num_training_steps), num_training_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(
        self,
        eval_dataset: Dataset | dict[str, Dataset] | str | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """mIoU of each of ``eval_modes`` on ``eval_dataset`` (default: the trainer's; a name: that entry of a dict
        ``eval_dataset``), logged and returned as ``{metric_key_prefix}_{MIOU_NAMES[mode]}`` with `Trainer`'s speed metrics
        (``{metric_key_prefix}_runtime``, ``..._samples_per_second``, ...); a dict of datasets is scored per name
        (``eval_{name}_...``), as `Trainer` does; with ``skip_memory_metrics=False`` the memory metrics are returned
        too. Outside ``train()``, ``fp16_full_eval`` / ``bf16_full_eval`` cast the model as `Trainer` does. The
        arguments' ``dataloader_*`` workers, prefetching and pinned memory load the images. ``ignore_keys`` has
        nothing to ignore here (no logits are gathered)."""
        dataset = self._evaluation_dataset(eval_dataset)
        if isinstance(dataset, dict):
            metrics = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        self._memory_tracker.start()
        started = time.time()
        accelerator = self.accelerator
        self._cast_for_full_evaluation()
        with accelerator.autocast():  # the run's mixed precision, before train() as within it
            scores = evaluate_segmentation(
                self.model,
                self._evaluation_loader(dataset),
                self.eval_modes,
                scales=self.eval_scales,
                input_size=self._evaluation_input_size(),
                accelerator=accelerator,
                progress=False,
                normalization=_normalization(dataset),
            )
        # NaN, not None, where no pixel was scored (evaluate_segmentation warned): `metric_for_best_model` compares
        metrics = {
            f"{metric_key_prefix}_{MIOU_NAMES[mode]}": math.nan
            if result["mean_iou"] is None
            else result["mean_iou"]
            for mode, result in scores.items()
        }
        batches = math.ceil(len(dataset) / (self.args.per_device_eval_batch_size * accelerator.num_processes))
        metrics.update(speed_metrics(metric_key_prefix, started, num_samples=len(dataset), num_steps=batches))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)  # returned, not logged, as by Trainer.evaluate
        return metrics

    def _evaluation_loader(self, dataset: Dataset) -> DataLoader:
        """This process's share of ``dataset`` in batches of ``per_device_eval_batch_size``, loaded with the
        arguments' ``dataloader_*`` workers, prefetching and pinned memory."""
        args = self.args
        workers = args.dataloader_num_workers
        return DataLoader(
            process_subset(dataset, self.accelerator.process_index, self.accelerator.num_processes),
            batch_size=args.per_device_eval_batch_size,
            collate_fn=collate_by_size,
            num_workers=workers,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            pin_memory=args.dataloader_pin_memory and self.accelerator.device.type != "cpu",
        )

    def _cast_for_full_evaluation(self) -> None:
        """With ``fp16_full_eval`` / ``bf16_full_eval`` outside ``train()``, the model in that precision (as
        `Trainer` does: the cast stays; within ``train()`` the run's mixed precision applies)."""
        if self.is_in_train:
            return
        if self.args.fp16_full_eval:
            self.model.to(dtype=torch.float16)
        elif self.args.bf16_full_eval:
            self.model.to(dtype=torch.bfloat16)

    def _evaluation_dataset(self, eval_dataset: Dataset | dict[str, Dataset] | str | None):
        """The dataset `evaluate` scores: the one given, the trainer's, or the entry of the trainer's dict named."""
        if isinstance(eval_dataset, str):
            if not isinstance(self.eval_dataset, dict) or eval_dataset not in self.eval_dataset:
                names = sorted(self.eval_dataset) if isinstance(self.eval_dataset, dict) else []
                raise ValueError(f"No evaluation set named {eval_dataset!r}; the trainer's are {names}.")
            return self.eval_dataset[eval_dataset]
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError(
                "WeCLIPTrainer.evaluate needs an eval_dataset: images with their masks "
                "(weclip_hf.data.labelled_sets.evaluation_set)."
            )
        if (
            not isinstance(dataset, dict)
            and len(dataset)
            and not {"pixel_values", "labels"} <= set(dataset[0])
        ):
            raise ValueError(
                f"eval_dataset items hold {sorted(dataset[0])}, not the 'pixel_values' and 'labels' (and "
                "'class_labels') of weclip_hf.data.labelled_sets.evaluation_set, which builds them "
                "from a raw split."
            )
        return dataset

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_description: str | None = None,
        dataset_split: str | None = None,
    ) -> None:
        """The WeCLIP model card (`weclip_hf.model_card.make_model_card`: the method, results, usage, labels,
        citation) in the output folder, as `examples/train.py` writes it, instead of `Trainer`'s generic one
        (`push_to_hub` calls this). Its code loads the repository `Trainer` pushes to, else ``model_name`` or
        the output folder's name; its title is ``model_name``, else that repository's name. Results: the
        evaluation of the model as it is (with ``load_best_model_at_end``, the best one's; else the last): the
        decoder's mIoU as the model's results, the CAM and pseudo-label mIoU listed only, on
        ``dataset_description`` (data that is no Hub ``dataset``: `weclip_hf.model_card.describe_dataset`) and
        ``dataset_split`` (default: the split of ``eval_dataset``, `evaluation_set`'s record). ``language``,
        ``tasks``, ``dataset_tags`` and ``dataset_args`` have no place in it."""
        if not self.is_world_process_zero():
            return
        dataset_name = dataset[0] if isinstance(dataset, list) else dataset
        metrics, other_metrics = split_model_metrics(self._card_evaluation())
        # the full id of the repository `init_hf_repo` created (user/name): `push_to_hub` gives its name only
        repo_id = self.hub_model_id or card_repo_id(model_name, self.args.output_dir)
        card = make_model_card(
            self.model.config,
            model_name or repo_id.split("/")[-1],
            "Trained with `WeCLIPTrainer` of weclip-hf (transformers' `Trainer`).",
            repo_id=repo_id,
            metrics=metrics,
            other_metrics=other_metrics,
            dataset_name=dataset_name,
            base_model=finetuned_from,
            tags=[tags] if isinstance(tags, str) else list(tags or ()),
            license=license or "mit",
            dataset_description=dataset_description,
            dataset_split=dataset_split or getattr(self.eval_dataset, "split", None),
        )
        save_model_card(card, self.args.output_dir)

    def _card_prefix(self) -> str:
        """The prefix of the figures the card reports: "eval", or for a dict ``eval_dataset`` "eval_<name>" of the
        set that ``metric_for_best_model`` names, else of its first set."""
        if not isinstance(self.eval_dataset, dict) or not self.eval_dataset:
            return "eval"
        metric = self.args.metric_for_best_model or ""
        named = [name for name in self.eval_dataset if metric.removeprefix("eval_").startswith(f"{name}_")]
        return f"eval_{(named or list(self.eval_dataset))[0]}"

    def _card_evaluation(self) -> dict[str, float]:
        """The finite figures (by their card names) of the evaluation that scored the model as it is now."""
        prefix = self._card_prefix()
        names = {f"{prefix}_{name}": name for name in MIOU_NAMES.values()}
        evaluations = [entry for entry in self.state.log_history if any(k in names for k in entry)]
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best is not None:
            step = int(Path(best).name.rsplit("-", 1)[-1])
            evaluations = [entry for entry in evaluations if entry.get("step") == step] or evaluations
        if not evaluations:
            return {}
        return {names[k]: v for k, v in evaluations[-1].items() if k in names and math.isfinite(v)}

    def predict(self, test_dataset: Dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Not supported: `Trainer.predict` would gather the logits of the patch grid, not label maps."""
        raise NotImplementedError(
            "WeCLIPTrainer.predict is not supported: score a dataset with masks with evaluate(), or segment images "
            "with the saved model and its processor (pipeline('image-segmentation', model=folder), or "
            "processor.post_process_semantic_segmentation(model(**inputs), target_sizes=...))."
        )
