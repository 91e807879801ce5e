#!/usr/bin/env python
"""Train WeCLIP with Accelerate: image-level labels -> frozen-CLIP pseudo labels -> segmentation decoder.

    accelerate launch examples/train.py                     # the offline toy world (default)
    accelerate launch examples/train.py --preset voc --dataset_name jxie/pascal-voc-2012 \\
        --output_dir weclip-voc                             # the official VOC recipe (DESIGN Part 1)

With --streaming the training split is read as a stream (shuffle buffer, no random access); resuming
such a run replays the interrupted pass from its start and skips the batches already trained on.

Phases: arguments -> data -> model -> optimizer/schedule -> loop (checkpoints, evaluation) -> final
evaluation, save, (push). Flags follow transformers' run_semantic_segmentation_no_trainer.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from training.arguments import clip_source, parse_args, resolved_before_loading
from training.computation import compiled_forward, run_computation
from training.data_and_model import embeddings_tokenizer, load_data_and_model
from training.evaluation import evaluate_in_training, final_evaluation
from training.loop import log_losses, make_train_loader, training_step
from transformers import PreTrainedTokenizerBase

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.checkpointing import (
    FrozenWeights,
    StreamPosition,
    TrainingState,
    find_checkpoint,
    holds_frozen_weights,
    load_checkpoint,
    prune_checkpoints,
)
from weclip_hf.data.loading import StreamingWeakSegmentationDataset, holds_pseudo_masks, names_no_dataset
from weclip_hf.evaluation import processor_input_size
from weclip_hf.host_memory import retain_freed_host_memory
from weclip_hf.hub import (
    TOKENIZER_FILES,
    card_repo_id,
    create_hub_repo,
    make_model_card,
    publish_folder,
    save_model_card,
    split_model_metrics,
)
from weclip_hf.local_cores import cores_per_local_process
from weclip_hf.model_loading import public_source_name
from weclip_hf.presets import TrainingRecipe
from weclip_hf.run_folder import (
    claim_output_dir,
    logged_evaluation,
    output_dir_held,
    remove_previous_run,
    resumes_in_place,
    truncate_log,
)
from weclip_hf.run_signals import exit_status, explain_signals, stop_on_signals
from weclip_hf.script_arguments import first_paragraph
from weclip_hf.training import create_optimizer_and_scheduler, global_batch
from weclip_hf.trajectory import (
    LAUNCH_FACTS,
    PATH_ARGS,
    check_resolved,
    check_resume,
    public_args,
    resolved_trajectory,
    save_training_checkpoint,
)

# the trackers' project (accelerate's init_trackers): TensorBoard writes its event files under <--output_dir>/weclip
TRACKER_PROJECT = "weclip"


# flags of train.py that examples/evaluate.py takes with the same meaning: the validation data (the toy world's
# only without a dataset) and how much of it is scored
EVALUATE_DATA_FLAGS = (
    "dataset_name", "data_dir", "dataset_path", "dataset_config_name", "validation_split", "image_column",
    "mask_column", "labels_column", "labels_zero_based", "max_eval_samples", "skip_unreadable_images",
    "skip_empty_images",
)  # fmt: skip


EVALUATE_TOY_FLAGS = ("toy_val_images", "seed")


# arguments of this machine's run, not of the model: left off its card (values derived from the flags, paths)
NOT_ON_CARD = frozenset(
    {
        "given_model_flags", "rfm_start_source", "resolved",
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
    }
)  # fmt: skip


def dataset_description(args) -> str:
    """What the run trained on, as the model card names it: the Hub id, the local folder's name, or the toy world."""
    if args.dataset_name:
        return args.dataset_name
    local = args.data_dir or args.dataset_path
    if local:
        return f"{Path(local).resolve().name} (a local dataset)"
    return "the toy world of weclip-hf (generated offline)"


def card_args(args, accelerator: Accelerator | None = None) -> dict:
    """The arguments the model card lists: those given or filled by the recipe, without this machine's
    (`NOT_ON_CARD`), the toy world's sizes only where the toy world was trained on, local folders by their names;
    with ``accelerator``, how it launched the run (`LAUNCH_FACTS`: the processes, whose number times the per-device
    batch is the global one, and the mixed precision)."""
    unused = NOT_ON_CARD if names_no_dataset(args) else NOT_ON_CARD | {"toy_train_images", "toy_val_images"}
    listed = {k: v for k, v in public_args(args).items() if v is not None and k not in unused}
    launch = {key: getattr(accelerator, key) for key in LAUNCH_FACTS} if accelerator is not None else {}
    return {**{k: public_source_name(str(v)) if k in PATH_ARGS else v for k, v in listed.items()}, **launch}


def write_card(
    args,
    cfg,
    output_dir: Path,
    summary: dict,
    split: str | None = None,
    accelerator: Accelerator | None = None,
) -> None:
    """The model card (README.md) of the trained model in ``output_dir``, with its mIoU figures on ``split`` and the
    launch of ``accelerator`` among its training arguments."""
    figures = {k: v for k, v in summary.items() if "miou" in k}
    metrics, other_metrics = split_model_metrics(figures)
    repo_id = card_repo_id(args.hub_model_id, output_dir)
    card = make_model_card(
        cfg,
        repo_id.split("/")[-1],
        "Trained with `examples/train.py` of weclip-hf.",
        repo_id=repo_id,
        metrics=metrics,
        other_metrics=other_metrics,
        dataset_name=args.dataset_name,
        dataset_description=dataset_description(args),
        dataset_split=split,
        weakly_supervised=not args.fully_supervised,
        mask_source=(
            "the pseudo masks of a first stage (examples/generate_pseudo_labels.py)"
            if holds_pseudo_masks(args.data_dir)
            else None
        ),
        training_args=card_args(args, accelerator),
    )
    save_model_card(card, output_dir)


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's `Accelerator`: its trackers, its output folder and the process group's ``--ddp_timeout``."""
    return Accelerator(
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=args.ddp_timeout))],
    )


def main(argv=None) -> dict:
    """Run training as the command line ``argv`` says; returns the final metrics."""
    args = parse_args(argv, first_paragraph(__doc__))
    accelerator = make_accelerator(args)
    # accelerate configured for accumulation (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, a DeepSpeed config; `accelerate
    # launch --gradient_accumulation_steps` sets it for DeepSpeed only, and is ignored otherwise, unseen here)
    if accelerator.gradient_accumulation_steps > 1:
        raise ValueError(
            f"accelerate asks for gradient accumulation over {accelerator.gradient_accumulation_steps} batches, "
            "which train.py does not do (it steps the optimizer after every batch, and WeCLIP's losses are "
            "normalized per batch by pixels its forward labels): remove the accumulation from the accelerate "
            "configuration (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, the DeepSpeed config) and give a larger "
            "--per_device_train_batch_size or more processes (one global batch, exactly)."
        )
    if not accelerator.is_main_process:
        return train(args, accelerator)
    with output_dir_held(Path(args.output_dir)):
        return train(args, accelerator)


def train(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """Phases 1-5 of the module docstring, in an ``--output_dir`` this process holds the lock on."""
    set_seed(args.seed)
    retained = False
    # the torch threads of a CPU run, which order its float sums as the device and torch.compile do (checkpoints
    # record all three)
    threads = None
    if accelerator.device.type == "cpu":
        threads = args.num_threads or cores_per_local_process(accelerator.num_processes)
        torch.set_num_threads(threads)
        retained = not args.release_host_memory and retain_freed_host_memory()
    computation = run_computation(args, accelerator.device, threads)
    output_dir = Path(args.output_dir)
    previous_run = claim_output_dir(
        output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, tracker_dirs=(TRACKER_PROJECT,)
    )
    resume_path = None
    if args.resume_from_checkpoint:  # checked before the data and model are loaded
        resume_path = find_checkpoint(output_dir, args.resume_from_checkpoint, log=accelerator.print)
        known = resolved_before_loading(args)
        check_resume(
            args, resume_path, accelerator, log=accelerator.print, known=known, computation=computation
        )
    if args.push_to_hub and accelerator.is_main_process:  # fail now, not after the training
        # the repository's full id (user/name, also for a name given without a user), which the card loads
        args.hub_model_id = create_hub_repo(args.hub_model_id, token=args.hub_token)
        accelerator.print(f"pushing to {args.hub_model_id} at the end")
    started = time.time()

    # 1. data and model (the tokenizer of the text embeddings first: saved with the model, and fails no later)
    tokenizer = embeddings_tokenizer(args, accelerator.print)
    model, image_processor, train_set, val_set = load_data_and_model(args, accelerator, retained, tokenizer)
    streamed = isinstance(train_set, StreamingWeakSegmentationDataset)
    clip = None if args.model_name_or_path else clip_source(args)
    args.resolved = resolved_trajectory(args, model, clip, None if streamed else len(train_set))
    if resume_path is not None:
        check_resolved(resume_path, args.resolved)
    train_loader, sampler = make_train_loader(args, train_set, accelerator)

    # 2. optimizer and schedule (decoder only; the frozen CLIP has no trainable parameter)
    recipe = TrainingRecipe(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainingRecipe)}
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_forward = compiled_forward(args, model, accelerator.device) if args.torch_compile else model
    if previous_run and accelerator.is_main_process:  # --overwrite_output_dir, now that the run is set up
        remove_previous_run(previous_run)
    accelerator.wait_for_everyone()
    # the scheduler and the stream position are checkpointed as JSON (training_state.json), never registered
    # with accelerate, whose custom objects are unpickled with weights_only=False (code in a checkpoint would run)
    position = StreamPosition()  # streamed data: pass and batch (map-style: derived from the step)
    if args.with_tracking:
        accelerator.init_trackers(
            TRACKER_PROJECT,
            {k: v for k, v in public_args(args).items() if isinstance(v, (int, float, str, bool))},
        )

    # 3. resume
    step = 0
    log_path = output_dir / "train_log.jsonl"
    evaluation_missed = False  # the evaluation of the step resumed at, not in the log
    frozen = FrozenWeights.of(accelerator.unwrap_model(model))  # the backbones, which checkpoints leave out
    if resume_path is not None:
        state = load_checkpoint(accelerator, model, optimizer, resume_path, frozen)
        if holds_frozen_weights(resume_path):  # an earlier version's: the backbones were read back from it
            frozen = FrozenWeights.of(accelerator.unwrap_model(model))
        scheduler.load_state_dict(state.scheduler)
        step, position = state.step, state.position
        if state.seconds is None:
            accelerator.print(
                f"Note: {resume_path} records no training time: train_seconds counts this run only."
            )
        else:  # the run's times count its earlier segments too
            started -= state.seconds
        # read by every process before the main one cuts the log back (which keeps the records of ``step``)
        evaluation_missed = not logged_evaluation(log_path, step)
        if accelerator.is_main_process:
            truncate_log(log_path, step)
        accelerator.print(f"resumed from {resume_path} at step {step}")

    # 4. training loop
    # the checkpoint of the step the run stands at, once written (the loop's, or the one resumed from in this folder)
    written = {}
    if resume_path is not None and resumes_in_place(output_dir, args.resume_from_checkpoint):
        written[step] = resume_path

    def checkpoint() -> Path:
        """``step_N`` of the run as it stands (step, schedule, stream position, seconds so far), written once."""
        if step not in written:
            state = TrainingState(step, scheduler.state_dict(), position, time.time() - started, computation)
            written.clear()
            written[step] = save_training_checkpoint(accelerator, output_dir, state, args, frozen)
            if args.checkpoints_total_limit and accelerator.is_main_process:
                prune_checkpoints(output_dir, args.checkpoints_total_limit, written[step], accelerator.print)
        return written[step]

    def evaluation_due() -> bool:
        """Whether ``--eval_steps`` evaluates the step the run stands at."""
        return bool(args.eval_steps) and step % args.eval_steps == 0 and val_set is not None

    def evaluate() -> None:
        """``--eval_steps``' evaluation of the step the run stands at (`evaluate_in_training`), logged."""
        input_size = processor_input_size(image_processor)
        evaluate_in_training(
            args, accelerator, accelerator.unwrap_model(model), val_set, step, log_path, input_size
        )
        model.train()

    checkpoint_every = args.checkpointing_steps
    steps_per_epoch = None if streamed else len(train_loader)
    bar = tqdm(
        total=args.max_train_steps,
        initial=step,
        desc="training",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    # a run stopped (or killed) at an evaluation step saved the checkpoint first: its evaluation is done now, as the
    # uninterrupted run did it before the next step (the steps' dropout is seeded by the step: no change to them)
    if evaluation_missed and evaluation_due():
        evaluate()
    # a signal is acted on when every process knows of it: one process after the step it came in, several after the
    # step whose loss check agreed on it (`training_step`), all after the same step
    stop_agreed = 0  # the signal every process knows of (its number)
    with stop_on_signals() as stop:  # leaving it, Ctrl-C / SIGTERM act at once again

        def stopping() -> bool:
            return bool(stop_agreed) or (accelerator.num_processes == 1 and stop["signal"] is not None)

        while step < args.max_train_steps and not stopping():
            # a resumed pass is replayed from its start; the batches already trained on are skipped
            if streamed:
                epoch, offset = position.epoch, position.batch
            else:
                epoch, offset = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            # the prepared loader re-sets the epoch of sampler / dataset to its own pass counter when iterated:
            # align that counter too (a resumed run starts it at 0)
            train_loader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_loader, offset) if offset else train_loader
            pass_ended = True
            for batch in loader:
                # the learning rate of this step's update (training_step steps the scheduler after it)
                lr = scheduler.get_last_lr()[0]
                out, stop_agreed = training_step(
                    args,
                    accelerator,
                    train_forward,
                    optimizer,
                    scheduler,
                    batch,
                    step,
                    stop["signal"] or 0,
                )
                step += 1
                position.batch += 1
                bar.update(1)
                if step % args.logging_steps == 0 or step == args.max_train_steps:
                    record = log_losses(accelerator, out, step, lr, log_path)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", rfm=record["rfm"])
                if checkpoint_every and step % checkpoint_every == 0:
                    checkpoint()
                # (not once stopping: the checkpoint first, within a signal's grace period)
                if evaluation_due() and not stopping():
                    evaluate()
                if step >= args.max_train_steps or stopping():
                    pass_ended = False
                    break
            if streamed and pass_ended:
                if position.batch == 0:
                    raise ValueError(
                        "The training stream holds fewer than one "
                        f"{global_batch(args.per_device_train_batch_size, accelerator.num_processes)}."
                    )
                position.epoch, position.batch = position.epoch + 1, 0
        bar.close()
        # a signal after the last agreement (one process: any signal): asked of every process once more
        if not stop_agreed:
            flag = torch.tensor([stop["signal"] or 0], device=accelerator.device)
            several = accelerator.num_processes > 1
            stop_agreed = int(accelerator.gather(flag).max() if several else flag)
    if stop_agreed:
        path = checkpoint()
        accelerator.print(f"stopped by signal {stop_agreed} at step {step}; checkpoint saved to {path}")
        accelerator.end_training()
        return {"stopped_at": step, "stopped_by_signal": stop_agreed}
    if checkpoint_every:  # the last step's (written by the loop where it falls on --checkpointing_steps)
        checkpoint()
    train_seconds = time.time() - started

    # 5. save the model, final evaluation, artifacts, push
    return finish_training(
        args,
        accelerator,
        accelerator.unwrap_model(model),
        image_processor,
        tokenizer,
        val_set,
        step,
        started,
        train_seconds,
    )


def finish_training(
    args: argparse.Namespace,
    accelerator: Accelerator,
    unwrapped: WeCLIPForSemanticSegmentation,
    image_processor: WeCLIPImageProcessor,
    tokenizer: PreTrainedTokenizerBase | None,
    val_set: Dataset | None,
    step: int,
    started: float,
    train_seconds: float,
) -> dict:
    """Phase 5: save the model, its processor and the ``tokenizer`` of its text embeddings (before evaluating: a
    failing or interrupted evaluation loses no training), the final evaluation, metrics.json, the model card, the
    push; returns the metrics."""
    output_dir = Path(args.output_dir)
    cfg = unwrapped.config
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir)
        image_processor.save_pretrained(output_dir)
        save_tokenizer(tokenizer, output_dir)
    written: list[str] = []  # of metrics.json and README.md, for the message of a signal

    def explain(signum: int) -> str:
        return unfinished_message(
            args, step, signum, written, evaluable=val_set is not None, with_tokenizer=tokenizer is not None
        )

    with explain_signals(explain, accelerator.print):
        metrics: dict = {"train_steps": step, "train_seconds": round(train_seconds, 1)}
        if val_set is not None:
            input_size = processor_input_size(image_processor)  # scored as the pipeline predicts
            metrics.update(final_evaluation(args, accelerator, unwrapped, val_set, output_dir, input_size))
        metrics["total_seconds"] = round(time.time() - started, 1)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            written.append("metrics.json")
            summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
            accelerator.log(
                {f"final_{k}": v for k, v in summary.items()}, step=step
            )  # --with_tracking's trackers
            split = val_set.split if val_set is not None else None
            write_card(args, cfg, output_dir, summary, split, accelerator)
            written.append("README.md")
            accelerator.print(json.dumps(summary, indent=2))
            saved = [
                "the model (from_pretrained and the pipeline load the folder)",
                *(["the CLIP tokenizer of its text embeddings"] if tokenizer is not None else []),
                "metrics.json",
                "its card",
            ]
            if args.num_overlays and val_set is not None:
                saved.append("overlays/")
            if args.checkpointing_steps:
                saved.append("the checkpoints step_N/")
            accelerator.print(f"Saved to {output_dir}: {', '.join(saved)}.")
            if args.push_to_hub:
                publish_folder(
                    output_dir, args.hub_model_id, token=args.hub_token, commit_message="End of training"
                )
    accelerator.end_training()
    return metrics


def save_tokenizer(tokenizer: PreTrainedTokenizerBase | None, output_dir: Path) -> None:
    """Save the ``tokenizer`` of the model's text embeddings beside it; without one (`embeddings_tokenizer`), remove
    the tokenizer that a run --overwrite_output_dir replaced left there, which need not be this model's."""
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
        return
    for name in TOKENIZER_FILES:
        (output_dir / name).unlink(missing_ok=True)


def unfinished_message(
    args: argparse.Namespace,
    step: int,
    signum: int,
    written: list[str],
    evaluable: bool,
    with_tokenizer: bool = False,
) -> str:
    """What a run stopped by signal ``signum`` after its training (in the final evaluation, the writing of its
    metrics and card, or the push) has saved (``with_tokenizer``: the model's tokenizer too), what it has not
    (``written``: of metrics.json and README.md), and how to finish: `evaluate_command` scores the saved model
    (``evaluable``: the run has a validation split)."""
    output_dir = Path(args.output_dir)
    model_files = ("model.safetensors", "config.json", "preprocessor_config.json")
    files = ", ".join(model_files + (TOKENIZER_FILES if with_tokenizer else ()))
    saved = f"the trained model (step {step}) is saved in {output_dir} ({files})"
    missing = [name for name in ("metrics.json", "README.md") if name not in written]
    if not missing:  # only the push was left
        return (
            f"stopped by signal {signum} while pushing to {args.hub_model_id}: {saved} with its metrics.json and "
            f"README.md; push the folder again (huggingface_hub's upload_folder)."
        )
    finish = f"; score it with: {evaluate_command(args)}" if evaluable else ""
    again = " without --overwrite_output_dir" if args.overwrite_output_dir else ""
    resume = (
        f", or finish the run: the same command{again} with --resume_from_checkpoint latest (its last checkpoint)"
        if args.checkpointing_steps
        else ""
    )
    return (
        f"stopped by signal {signum} after the training: {saved}, but not {' and '.join(missing)}{finish} "
        f"(or train again with --overwrite_output_dir){resume}."
    )


def evaluate_command(args: argparse.Namespace) -> str:
    """The examples/evaluate.py command line that scores the model of this run's ``--output_dir`` on its
    validation data as the final evaluation does (the CAM / RFM pseudo labels, the multi-scale decoder unless
    ``--no_msf``; the saved processor's size)."""
    flags = EVALUATE_DATA_FLAGS + (EVALUATE_TOY_FLAGS if names_no_dataset(args) else ())
    if args.train_val_split:  # the held-out rows: that split of that seed
        flags = tuple(dict.fromkeys((*flags, "train_val_split", "train_split", "seed")))
    words = ["python", "examples/evaluate.py", "--model_name_or_path", args.output_dir, "--pseudo_labels"]
    for flag in flags:
        value = getattr(args, flag)
        if value is True:
            words.append(f"--{flag}")
        elif value is not None and value is not False:  # a seed of 0 is given
            words += [f"--{flag}", str(value)]
    if not args.no_msf:
        words += ["--msf", "--scales", *map(str, args.msf_scales)]
    words += ["--batch_size", str(args.per_device_eval_batch_size)]
    return shlex.join(words)


if __name__ == "__main__":
    raise SystemExit(exit_status(main()))
