"""A resume of examples/train_with_trainer.py: the checkpoint of --resume_from_checkpoint, refused before
anything loads where a run cannot continue from it exactly, the arguments its run's checkpoints record
(`trajectory`) and their check against a resume's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from weclip_hf.batch_jobs import comparable_path
from weclip_hf.checkpointing import CheckpointError, Computation, check_unchanged, existing_checkpoint_folder
from weclip_hf.trainer import TRAINER_TERMS, recorded_computation, trajectory_arguments
from weclip_hf.trajectory import computation_change_warning

if TYPE_CHECKING:  # an annotation only: trainer_run.arguments imports this module
    from trainer_run.arguments import WeCLIPArguments


# `WeCLIPArguments` a resumed run may change (they do not shape its training), and those that are local paths
RESUMABLE = (
    "validation_split", "toy_val_images", "overwrite_output_dir", "model_name_or_path", "evaluation_asked",
)  # fmt: skip
PATHS = ("data_dir", "dataset_path", "clip_model_name_or_path", "dino_model_name_or_path")


def resume_spec(value: str | None) -> str | None:
    """--resume_from_checkpoint as given, Trainer's booleans read as `Trainer.train` reads them: True (any case) as
    'latest', the newest checkpoint of --output_dir; False as no resume."""
    spelling = (value or "").lower()
    return "latest" if spelling == "true" else None if spelling == "false" else value


def trajectory(args: WeCLIPArguments, training_args: TrainingArguments) -> dict:
    """The arguments that shape the run's training (JSON values): what its checkpoints record and a resume repeats."""
    values = {k: v for k, v in dataclasses.asdict(args).items() if k not in RESUMABLE}
    values.update({k: comparable_path(values[k]) for k in PATHS if values[k]})
    return {**values, **trajectory_arguments(training_args)}


def missing_training_state(folder: Path) -> list[str]:
    """What a Trainer checkpoint lacks of the state an exact resume restores: "optimizer" (optimizer.pt, or its
    sharded or DeepSpeed folder) and "scheduler" (scheduler.pt); one saved with --save_only_model lacks both."""
    folders = [path.name for path in folder.iterdir() if path.is_dir()]
    # DeepSpeed keeps both in its global_step<N> folder
    deepspeed = any(name.startswith("global_step") for name in folders)
    optimizer = (
        deepspeed
        or any((folder / name).is_file() for name in (OPTIMIZER_NAME, OPTIMIZER_NAME_BIN))
        or any("optimizer" in name for name in folders)
    )
    scheduler = deepspeed or (folder / SCHEDULER_NAME).is_file()
    return [what for what, saved in (("optimizer", optimizer), ("scheduler", scheduler)) if not saved]


def checkpoint_to_resume(training_args: TrainingArguments) -> str | None:
    """The checkpoint of --resume_from_checkpoint ('latest': the newest checkpoint-N of --output_dir); a folder that
    does not exist, holds no Trainer checkpoint (its trainer_state.json), or no optimizer or scheduler state (saved
    with --save_only_model: the run would restart its warm-up and AdamW's moments) is refused."""
    spec, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    if spec is None:
        return None
    if spec != "latest":
        path = existing_checkpoint_folder(spec)
        if not (path / TRAINER_STATE_NAME).is_file():
            raise CheckpointError(
                f"{path} is no Trainer checkpoint (it holds no {TRAINER_STATE_NAME}): give a checkpoint-N folder "
                "of a train_with_trainer.py run, or 'latest'."
            )
    else:
        latest = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if latest is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: {output_dir} holds no checkpoint-N to resume from; leave the "
                "flag out to start a new run."
            )
        path = Path(latest)
    missing = missing_training_state(path)
    if missing:
        raise CheckpointError(
            f"{path} holds no {' or '.join(missing)} state ({OPTIMIZER_NAME}, {SCHEDULER_NAME}): it was saved with "
            "--save_only_model, and a run cannot be resumed from it exactly (its warm-up and AdamW's moments would "
            "start over). Resume from a checkpoint of a run without --save_only_model, or leave "
            "--resume_from_checkpoint out to start a new run."
        )
    return str(path)


def check_resume(path: Path, recorded: dict, computation: Computation) -> None:
    """Refuse to resume from checkpoint ``path`` a run whose arguments that shape the training (``recorded``,
    `trajectory`) differ from its run's, naming each; warn, not refuse, a run that computes otherwise
    (``computation``: another device type, torch.compile, CPU threads), whose float sums then run in another order
    (`computation_change_warning` in the Trainer's flags). A checkpoint of an earlier version records neither, or no
    computation: what it lacks is not compared."""
    label = lambda key: "processes (world_size)" if key == "world_size" else f"--{key}"  # noqa: E731
    if not check_unchanged(path, recorded, label=label):
        print(f"Note: {path} records no training arguments: they cannot be checked.")
    warning = computation_change_warning(path, recorded_computation(path), computation, TRAINER_TERMS)
    if warning:
        print(warning)
