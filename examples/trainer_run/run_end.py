"""The end of a trained run of examples/train_with_trainer.py: save the model, its figures and tokenizer,
the final evaluation, the card, the push; and what a signal that stops it there has left, and how to finish it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from trainer_run.arguments import WeCLIPArguments
from weclip_hf.hub import publish_folder
from weclip_hf.model_card import describe_dataset
from weclip_hf.trainer import WeCLIPTrainer

# what a finished run writes besides its model, as transformers' example scripts (`Trainer.save_metrics`,
# `Trainer.save_state`); the first is written by every run, evaluated or not (`claim_output_dir`: a finished run)
FINAL_RESULTS = ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json")


@dataclass
class RunEnd:
    """What the end of a trained run (``step`` steps in ``output_dir``) has written so far (``done`` of ``parts``, in
    their order), for the message of a signal that stops it there; ``results``: its final evaluation's."""

    output_dir: Path
    step: int
    overwrite: bool  # --overwrite_output_dir: a resume leaves it out
    parts: list[str]
    done: int = 0
    results: dict = field(default_factory=dict)

    def message(self, signum: int) -> str:
        """What is saved, what is not, and how to finish the run: resume its last checkpoint, score its model."""
        saved, missing = self.parts[: self.done], self.parts[self.done :]
        held = f"saved in {self.output_dir}: {', '.join(saved)}" if saved else "nothing of its end is saved"
        text = f"stopped by signal {signum} after the training (step {self.step}): {held}; not done: "
        text += f"{', '.join(missing)}."
        checkpoint = get_last_checkpoint(str(self.output_dir)) if self.output_dir.is_dir() else None
        if checkpoint:
            steps = int(checkpoint.rsplit("-", 1)[-1])
            # a checkpoint of the last step trains nothing again
            again = "no step" if steps == self.step else f"steps {steps + 1}-{self.step}"
            without = " without --overwrite_output_dir" if self.overwrite else ""
            text += (
                f" Finish it: the same command{without} with --resume_from_checkpoint latest (from "
                f"{Path(checkpoint).name} it trains {again} again, then runs this end whole)."
            )
        if saved and any(part.startswith(FINAL_EVALUATION) for part in missing):
            text += (
                f" Score the saved model: the same data flags with --do_eval --model_name_or_path {self.output_dir} "
                f"--output_dir {self.output_dir}."
            )
        if not checkpoint and not saved:
            text += " No checkpoint was saved (--save_strategy no): only a new run trains the model again."
        return text


# the final evaluation's part of `run_end_parts`
FINAL_EVALUATION = "the final evaluation"


def run_end_parts(training_args: TrainingArguments, evaluate: bool) -> list[str]:
    """What the end of a trained run writes, in order (`finish_run`): ``evaluate``: a final evaluation."""
    parts = [
        "the trained model (model.safetensors, config.json, preprocessor_config.json)",
        "train_results.json and trainer_state.json",
        "the CLIP tokenizer of its text embeddings",
    ]
    if evaluate:
        parts.append(f"{FINAL_EVALUATION} (eval_results.json, all_results.json)")
    parts.append("the model card (README.md)")
    if training_args.push_to_hub:
        parts.append(f"the push to {training_args.hub_model_id or 'the Hub'}")
    return parts


def finish_run(
    args: WeCLIPArguments,
    training_args: TrainingArguments,
    trainer: WeCLIPTrainer,
    tokenizer: PreTrainedTokenizerBase,
    train_metrics: dict,
    end: RunEnd,
) -> None:
    """The end of a trained run: save the model, its training figures and log, its tokenizer; score it; its card and
    push; each part counted in ``end`` once written (``end.results``: the evaluation's figures)."""
    output_dir = end.output_dir
    # saved before the evaluation (which casts it with --fp16_full_eval), not pushed (as save_model does with
    # --push_to_hub): the push below publishes it with the card and figures of that evaluation
    trainer.save_model(training_args.output_dir, _internal_call=True)
    end.done += 1
    # as transformers' example scripts: train_results.json, and trainer_state.json with the whole log history
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    end.done += 1
    # beside the model: new class names need it (the checkpoints, which resume the run, go without)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    end.done += 1
    if trainer.eval_dataset is not None:
        results = trainer.evaluate()  # the model as saved (with load_best_model_at_end, the best one)
        results["train_seconds"] = train_metrics["train_runtime"]
        # eval_results.json, and all_results.json with the training's
        trainer.save_metrics("eval", results)
        if trainer.is_world_process_zero():
            print(json.dumps(results, indent=2))
        end.results = results
        end.done += 1
    # README.md, with these figures, on the data named as train.py's card names it
    trainer.create_model_card(
        dataset=args.dataset_name,
        dataset_description=describe_dataset(args.dataset_name, args.data_dir or args.dataset_path),
    )
    end.done += 1
    if training_args.push_to_hub and trainer.is_world_process_zero():
        # one commit of the allowed files (`publishable_files`): the model, its tokenizer, card, figures
        publish_folder(
            output_dir,
            trainer.hub_model_id,  # the full id of the repository the trainer created
            token=training_args.hub_token,
            revision=training_args.hub_revision,
            commit_message="End of training",
        )
