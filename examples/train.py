#!/usr/bin/env python
"""Train WeCLIP (or WeCLIP+, --dino_model_name_or_path) with Accelerate: image-level labels -> frozen-CLIP pseudo
labels -> segmentation decoder.

    accelerate launch examples/train.py                     # the offline toy world (default)
    accelerate launch examples/train.py --preset voc --dataset_name jxie/pascal-voc-2012 \\
        --output_dir weclip-voc                             # the official VOC recipe (DESIGN Part 1)

With --streaming the training split is read as a stream (shuffle buffer, no random access); resuming
such a run replays the interrupted pass from its start and skips the batches already trained on.

Phases: arguments -> data -> model -> optimizer/schedule -> loop (checkpoints, evaluation) -> final
evaluation, save, (push). Flags follow transformers' run_semantic_segmentation_no_trainer.py.

The phases' code lives in `examples/training/`, a module each (arguments, data_and_model, computation, loop,
evaluation, model_card, run_end); this script holds the run's outline: `main` -> `train` (load, set up, resume,
loop) -> `finish_training`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from training.arguments import clip_source, parse_args, resolved_before_loading
from training.computation import compiled_forward, run_computation
from training.data_and_model import embeddings_tokenizer, load_data_and_model
from training.evaluation import evaluate_in_training
from training.loop import log_losses, make_train_loader, training_step
from training.run_end import finish_training

from weclip_hf.checkpointing import (
    FrozenWeights,
    StreamPosition,
    TrainingState,
    find_checkpoint,
    holds_frozen_weights,
    load_checkpoint,
    prune_checkpoints,
)
from weclip_hf.data.batches import StreamingWeakSegmentationDataset
from weclip_hf.evaluation import processor_input_size
from weclip_hf.host_memory import retain_freed_host_memory
from weclip_hf.hub import create_hub_repo
from weclip_hf.local_cores import cores_per_local_process
from weclip_hf.presets import TrainingRecipe
from weclip_hf.run_folder import (
    claim_output_dir,
    logged_evaluation,
    output_dir_held,
    remove_previous_run,
    resumes_in_place,
    truncate_log,
)
from weclip_hf.run_signals import exit_status, stop_on_signals
from weclip_hf.script_arguments import first_paragraph
from weclip_hf.training import create_optimizer_and_scheduler, global_batch
from weclip_hf.trajectory import (
    check_resolved,
    check_resume,
    public_args,
    resolved_trajectory,
    save_training_checkpoint,
)

# the trackers' project (accelerate's init_trackers): TensorBoard writes its event files under <--output_dir>/weclip
TRACKER_PROJECT = "weclip"


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


if __name__ == "__main__":
    raise SystemExit(exit_status(main()))
