"""Phase 5 of examples/train.py, the end of a run: save the model, its processor and tokenizer, the final
evaluation, metrics.json, the card, the push; and what a run stopped by a signal meanwhile has left, with the
examples/evaluate.py command that scores its model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from training.evaluation import final_evaluation
from training.model_card import write_card
from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.data.sources import names_no_dataset
from weclip_hf.evaluation import processor_input_size
from weclip_hf.hub import TOKENIZER_FILES, publish_folder
from weclip_hf.run_signals import explain_signals

# flags of train.py that examples/evaluate.py takes with the same meaning: the validation data (the toy world's
# only without a dataset) and how much of it is scored
EVALUATE_DATA_FLAGS = (
    "dataset_name", "data_dir", "dataset_path", "dataset_config_name", "validation_split", "image_column",
    "mask_column", "labels_column", "labels_zero_based", "max_eval_samples", "skip_unreadable_images",
    "skip_empty_images",
)  # fmt: skip


EVALUATE_TOY_FLAGS = ("toy_val_images", "seed")


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
