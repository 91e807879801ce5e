#!/usr/bin/env python
"""Train WeCLIP with transformers' `Trainer`: the recipe of examples/train.py (crops, pseudo labels, optimizer,
schedule) in Trainer's loop, every `TrainingArguments` flag on the command line, for code built around Trainer
(callbacks, its checkpoints, its trackers).

    python examples/train_with_trainer.py                   # the offline toy world
    python examples/train_with_trainer.py --preset voc --dataset_name jxie/pascal-voc-2012 --output_dir weclip-voc
    python examples/train_with_trainer.py --data_dir my-data --class_names cat dog --max_steps 3000 \\
        --gradient_accumulation_steps 2 --eval_strategy steps --eval_steps 500 --save_steps 500 \\
        --load_best_model_at_end --metric_for_best_model miou --save_total_limit 2 --report_to tensorboard --bf16

The arguments are this script's (`WeCLIPArguments`: data and model) and `TrainingArguments`, parsed by
`HfArgumentParser` as transformers' run_semantic_segmentation.py. The `TrainingArguments` defaults are the recipe's
(`recipe_defaults`: that of --preset, else the toy world's without a dataset, else VOC's: voc-plus for WeCLIP+,
--dino_model_name_or_path): its batch, learning rate, weight decay, warm-up and steps, no gradient clipping
(``max_grad_norm=0``, as the official code), and its evaluations and checkpoints at the same points of the schedule
however long the run (--max_steps, or --num_train_epochs: as ratios of the run); a flag given replaces the recipe's
value. `WeCLIPTrainer` (`weclip_hf.trainer`) is `Trainer` with WeCLIP's collator, the official optimizer and
warm-up + linear schedule built from the `TrainingArguments`, and an evaluation that scores segmentations
(``eval_miou`` of the decoder, ``eval_cam_miou``, ``eval_pseudo_label_miou`` of the RFM pseudo labels).

`--resume_from_checkpoint` (a checkpoint-N folder, or 'latest': True as `Trainer.train` reads it) continues a run
exactly (Trainer restores the RNG and the data position; the model's step counter, which starts the RFM, is a saved
buffer): each checkpoint records the arguments that shape the training (training_args.json), and a resume that
changes one is refused, as is a checkpoint saved with --save_only_model (it holds no optimizer or schedule state to
continue); it records how the run computed too (computation.json: the device type, torch.compile, a CPU run's
threads), and a resume that computes otherwise is warned (its float sums run in another order), naming the flags of
an exact resume.
Ctrl-C / SIGTERM during the training save a checkpoint of the step under way and stop the run (exit status 130 /
143), as examples/train.py, the complete script (streaming, several processes on a CPU, multi-scale evaluation,
overlays); in the end of the run (the final save, evaluation, card, push) they stop it at once, saying what is saved,
what is not, and how to finish it.

--do_train / --do_eval as in transformers' example scripts: --do_train trains, --do_eval scores the model at the end
(an --eval_strategy sets it too); --do_eval alone scores the saved model of --model_name_or_path without training
(eval_results.json in --output_dir). Neither given, the run trains and scores its model where the data has a
validation split. --do_predict is refused (no test-split predictions: examples/segment.py segments images).

The run's concepts live in `examples/trainer_run/`, a module each (arguments, resume, data, evaluation, run_end);
this script holds the run's outline: `main` (arguments, resume checks, data and model, training, the run's end).
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from accelerate import PartialState
from trainer_run.arguments import config_class, parse_args
from trainer_run.data import data_source, label_reading, no_validation_split, scored_set
from trainer_run.evaluation import EVAL_MODES, evaluate_saved_model
from trainer_run.resume import check_resume, checkpoint_to_resume, trajectory
from trainer_run.run_end import FINAL_RESULTS, RunEnd, finish_run, run_end_parts
from transformers import set_seed

from weclip_hf import WeCLIPImageProcessor
from weclip_hf.data.labelled_sets import training_set
from weclip_hf.data.sources import dataset_classes_note, load_dataset_splits
from weclip_hf.data.toy import default_clip_model
from weclip_hf.data.transforms import TrainAugmentation
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.model_loading import load_clip_tokenizer
from weclip_hf.modeling_weclip_plus import model_from_backbones
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import get_preset, preset_config_kwargs, processor_size, with_class_names
from weclip_hf.run_folder import TRAINER_CHECKPOINTS, claim_output_dir, remove_previous_run
from weclip_hf.run_signals import exit_status, explain_signals, stop_on_signals
from weclip_hf.script_arguments import (
    first_paragraph,
    model_type_of_args,
    parse_config_overrides,
    recipe_name,
)
from weclip_hf.trainer import (
    RecordRunCallback,
    StopOnSignalCallback,
    WeCLIPTrainer,
    agreed_signal,
    trainer_computation,
)
from weclip_hf.training import check_fills_a_batch, schedule_notes


def main(argv=None) -> dict:
    """Train as the command line ``argv`` says, save the model, its processor and the CLIP tokenizer of its text
    embeddings, return the validation mIoU; with --do_eval alone, score a saved model (`evaluate_saved_model`)."""
    args, training_args = parse_args(argv, first_paragraph(__doc__))
    if not training_args.do_train:
        return evaluate_saved_model(args, training_args)
    output_dir = Path(training_args.output_dir)
    resume = checkpoint_to_resume(training_args)
    previous_run = claim_output_dir(
        output_dir,
        training_args.resume_from_checkpoint,
        args.overwrite_output_dir,
        TRAINER_CHECKPOINTS,
        tracker_dirs=("runs",),  # TensorBoardCallback's events: <output_dir>/runs/<time>_<host>
        results=FINAL_RESULTS,
    )
    recorded = trajectory(args, training_args)
    computation = trainer_computation(training_args)
    if resume:
        check_resume(Path(resume), recorded, computation)

    # data and model
    source = data_source(args, training_args)
    preset = get_preset(recipe_name(args))  # the recipe of parse_args
    set_seed(training_args.seed)  # the decoder's initial weights
    train_raw, val_raw, names = load_dataset_splits(
        source,
        train_split=args.train_split,
        validation_split=args.validation_split,
        preset=args.preset,
        train_val_split=args.train_val_split,
        labels_column=args.labels_column,
        dataset_classes=not args.class_names,
    )
    if "class_names" in names and not (args.preset or args.class_names or source.toy):
        print(dataset_classes_note(names["class_names"]))
    if val_raw is None and training_args.eval_strategy != "no":
        raise no_validation_split(
            f"--eval_strategy {training_args.eval_strategy.value} (the recipe's or given)"
        )
    if val_raw is None and args.evaluation_asked:
        raise no_validation_split("--do_eval")
    if not training_args.do_eval:  # --do_train alone: no final evaluation
        val_raw = None
    # the config of examples/train.py
    config_kwargs = preset_config_kwargs(args.preset or ("toy" if source.toy else None))
    config_kwargs.update({k: v for k, v in names.items() if v is not None})
    config_kwargs = with_class_names(config_kwargs, args.class_names)
    if args.background_names:
        config_kwargs["background_names"] = args.background_names
    if args.rfm_start_step is not None:
        config_kwargs["rfm_start_step"] = args.rfm_start_step
    if args.config_overrides:
        config_kwargs.update(parse_config_overrides(args.config_overrides, config_class(args)))
    clip = args.clip_model_name_or_path or default_clip_model(toy=preset.name == "toy")
    plus = model_type_of_args(args) == "weclip_plus"
    # the tokenizer of the text embeddings, loaded once: the model's are computed with it, and it is saved with it
    tokenizer = load_clip_tokenizer(clip, "--clip_model_name_or_path")
    model = model_from_backbones(
        clip, args.dino_model_name_or_path, plus, tokenizer=tokenizer, **config_kwargs
    )
    cfg = model.config
    cfg.training_preset = preset.name  # its evaluation settings are the model's (evaluate.py, segment.py)
    if training_args.max_steps > 0:  # when the RFM (and WeCLIP+'s self-training) act, if not in this run
        for note in schedule_notes(cfg, 0, training_args.max_steps, "--rfm_start_step, or --preset, sets it"):
            print(f"Note: {note}")
    recipe = preset.training
    if args.crop_size is not None:
        recipe = dataclasses.replace(recipe, crop_size=args.crop_size)
    processor = WeCLIPImageProcessor(
        size=processor_size(preset.evaluation.eval_long_side, recipe.crop_size),
        **processor_settings(cfg),
    )
    normalization = PixelNormalization.from_image_processor(processor)
    reading = label_reading(args, cfg, preset.dataset.skip_empty_images)
    # one process reads the images for the labels
    labelling = training_args.main_process_first
    augment = TrainAugmentation(
        recipe.crop_size,
        (recipe.scale_min, recipe.scale_max),
        ignore_index=cfg.semantic_loss_ignore_index,  # --config_overrides may set it (-100: > 254 classes)
        normalization=normalization,
    )
    # the crops and flips seeded as examples/train.py's
    train_set, summary = training_set(
        train_raw, cfg.num_foreground_classes, augment, reading, seed=training_args.seed, labelling=labelling
    )
    print(f"train: {summary}")
    # whole batches (the recipe's): a smaller set trained no step, then saved and scored its model as trained
    if training_args.dataloader_drop_last:
        check_fills_a_batch(
            len(train_set), training_args.per_device_train_batch_size, training_args.world_size
        )
    val_set = None if val_raw is None else scored_set(val_raw, cfg, processor, reading, labelling)

    # training; Ctrl-C / SIGTERM within it end the step under way and save its checkpoint
    stop_on_signal = StopOnSignalCallback({"signal": None})
    trainer = WeCLIPTrainer(
        model,
        training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=processor,  # saved with the model and in every checkpoint
        # training_args.json and computation.json in every checkpoint (written by on_save: the signal's one too)
        callbacks=[RecordRunCallback(recorded, computation), stop_on_signal],
        eval_modes=EVAL_MODES,
        eval_long_side=preset.evaluation.eval_long_side,
    )
    if (
        previous_run and PartialState().is_main_process
    ):  # --overwrite_output_dir, once the data and model load
        remove_previous_run(previous_run)
    with stop_on_signals() as stop:  # leaving it, Ctrl-C / SIGTERM act at once again
        stop_on_signal.stop = stop
        train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    signum, step = stop_on_signal.signal, trainer.state.global_step
    if signum:
        if trainer.is_world_process_zero():
            print(
                f"stopped by signal {signum} at step {step}; checkpoint saved to {output_dir / f'checkpoint-{step}'}"
                ": continue the run with --resume_from_checkpoint latest (its model is saved and scored when it ends)"
            )
        return {"stopped_at": step, "stopped_by_signal": signum}
    # the end of the run: a signal now stops it at once, saying what is saved and what is not
    end = RunEnd(
        output_dir, step, args.overwrite_output_dir, run_end_parts(training_args, val_set is not None)
    )
    log = print if trainer.is_world_process_zero() else lambda message: None
    with explain_signals(end.message, log):
        # one that came after the last step (in Trainer's last save), in any process: every process stops
        late = agreed_signal(stop["signal"] or 0, training_args)
        if late:
            signal.raise_signal(late)
        finish_run(args, training_args, trainer, tokenizer, train_metrics, end)
    return end.results


if __name__ == "__main__":
    # 128 + the signal's number for a run a signal stopped (its checkpoint saved), as a killed process
    raise SystemExit(exit_status(main()))
